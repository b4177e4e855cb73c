//! Validation cost per token: signature and claim checks, no network; cold (parsing and full
//! verification) and through the gate with its verified-token cache (a hit: route, extraction,
//! digest, lookup, key and time rechecks), for one algorithm of each kind, with one and with
//! fifty required claims.

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

/// Required claims in the policy (and matching claims in the token): one, as most policies
/// have, and fifty, to show what each further claim check costs.
const REQUIRED_CLAIM_COUNTS: [usize; 2] = [1, 50];

/// One algorithm of each kind the sidecar verifies (RS384/512 and PS384/512 cost about what
/// RS256 and PS256 do, HS384/512 what HS256 does).
const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
];

fn bench_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let idp = runtime
        .block_on(IdentityProvider::start())
        .expect("identity provider");
    // One key of each family the sidecar verifies; the HMAC secret inline.
    let asymmetric = [
        KeyFamily::Rsa,
        KeyFamily::EcP256,
        KeyFamily::EcP384,
        KeyFamily::Ed25519,
    ]
    .map(|family| format!("{{jwk: {}}}", idp.current_key(family).jwk));
    let hmac = idp.current_key(KeyFamily::Hmac);
    let signing_keys = format!(
        "{}, {{id: {}, value: \"{}\"}}",
        asymmetric.join(", "),
        hmac.kid,
        hmac.secret_base64.as_deref().expect("HMAC secret")
    );
    let algorithms = ALGORITHMS.map(|alg| format!("{alg:?}")).join(", ");
    let metrics = Metrics::new().expect("metrics");
    // The gate's decisions on this thread, without a scheduler hop.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for claim_count in REQUIRED_CLAIM_COUNTS {
        // Claim i is `claim{i}` with value `value{i}`; the policy requires each, with its value.
        let required: Vec<String> = (0..claim_count)
            .map(|i| format!("{{name: claim{i}, values: [value{i}]}}"))
            .collect();
        let text = format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: bench}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    issuerSigningKeys: [{}]\n    algorithms: [{}]\n    issuers: [\"{}\"]\n    audiences: [\"api://tokengate-tests\"]\n    requiredClaims: [{}]\n",
            signing_keys,
            algorithms,
            idp.issuer(),
            required.join(", ")
        );
        let doc = parse_documents(&text).expect("policy").remove(0);
        let policy = compile(&doc, &NoFiles).expect("compiles");
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
        let mut claims = idp.claims();
        for i in 0..claim_count {
            claims[format!("claim{i}")] = format!("value{i}").into();
        }
        let claims_label = if claim_count == 1 { "claim" } else { "claims" };
        for alg in ALGORITHMS {
            let token = idp.sign(alg, &claims);
            // Taken after minting: the token's nbf is its minting second.
            let now = tokengate_sidecar::gate::unix_now() + 1.0;
            let parse_and_verify = |token: &str| {
                let parsed = ParsedToken::parse(token)?;
                verify(&parsed, &policy.verification, &view, now, &mut NoTrace)
            };
            parse_and_verify(&token).expect("token verifies");
            c.bench_function(
                &format!("verify {alg:?} cold, {claim_count} required {claims_label}"),
                |b| b.iter(|| parse_and_verify(black_box(&token))),
            );
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
            c.bench_function(
                &format!("gate {alg:?} cached, {claim_count} required {claims_label}"),
                |b| b.iter(decide),
            );
        }
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
        remote: vec![std::sync::Arc::new(SourceKeys::of(
            vec![key],
            Some(idp.issuer().to_owned()),
        ))],
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
