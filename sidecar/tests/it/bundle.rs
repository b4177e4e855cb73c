//! `run --bundle DIR --pod-labels FILE`: the operator's rendering of a namespace, projected by
//! kubelet (ConfigMap `tokengate-policies` in DIR/policies, Secret `tokengate-keys` in
//! DIR/keys, downward-API labels), changing under a running sidecar.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::{Bench, Projected, wait_until};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokengate_testkit::dashboard;
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider};

/// A TokenPolicy as the operator renders it: selects `app=<app>`, copies `sub` into `header`.
fn rendered(name: &str, app: &str, created: &str, idp: &IdentityProvider, header: &str) -> String {
    format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  name: {name}\n  namespace: shop\n  creationTimestamp: \"{created}\"\n  generation: 1\nspec:\n  selector:\n    matchLabels: {{app: {app}}}\n  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n  forwarding:\n    claimsToHeaders: [{{claim: sub, header: {header}}}]\n",
        idp.jwks_url()
    )
}

/// A policy whose only key is the symmetric key `key` of Secret `hmac`.
fn hmac_policy(name: &str, key: &str) -> String {
    format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  name: {name}\n  namespace: shop\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  selector:\n    matchLabels: {{app: a}}\n  validateJwt:\n    issuerSigningKeys: [{{id: hmac, secretRef: {{name: hmac, key: {key}}}}}]\n    algorithms: [HS256]\n"
    )
}

struct BundleBench {
    bench: Bench,
    policies: Projected,
    keys: Projected,
    labels: Projected,
}

impl BundleBench {
    /// A sidecar on `DIR` (not created yet) with pod labels `app=<app>`.
    async fn start(app: &str) -> Self {
        let idp = IdentityProvider::start().await.expect("provider");
        let echo = EchoServer::start().await.expect("echo");
        let dir = tempfile::tempdir().expect("dir");
        let bundle = dir.path().join("bundle");
        let mut labels = Projected::new(dir.path().join("podinfo"));
        labels.publish(&[(
            "labels",
            &format!("app=\"{app}\"\npod-template-hash=\"5d\"\n"),
        )]);
        let mut config = crate::support::config(Vec::new(), &echo);
        config.bundle = Some(bundle.clone());
        config.pod_labels = Some(labels.dir.join("labels"));
        config.reload_interval = Duration::from_millis(20);
        let bench = Bench::with_config(idp, echo, dir, config).await;
        Self {
            bench,
            policies: Projected::new(bundle.join("policies")),
            keys: Projected::new(bundle.join("keys")),
            labels,
        }
    }

    fn set_app(&mut self, app: &str) {
        self.labels.publish(&[(
            "labels",
            &format!("app=\"{app}\"\npod-template-hash=\"5d\"\n"),
        )]);
    }

    /// Which claim header the application saw, or the refusal reason.
    async fn outcome(&self) -> String {
        let token = self.bench.idp.token(Algorithm::RS256);
        outcome_of(&self.bench, &token).await
    }

    async fn eventually(&self, expected: &str) {
        wait_until(&format!("outcome {expected}"), async || {
            self.outcome().await == expected
        })
        .await;
    }

    fn errors(&self) -> f64 {
        self.bench
            .metric("tokengate_policy_reloads_total", &[("result", "error")])
    }
}

async fn outcome_of(bench: &Bench, token: &str) -> String {
    let reply = bench.get_with_token("/", token).await;
    if reply.status != StatusCode::OK {
        return reply.reason();
    }
    let echoed = reply.echoed();
    match (
        echoed.header("x-a").is_some(),
        echoed.header("x-b").is_some(),
    ) {
        (true, false) => "x-a".into(),
        (false, true) => "x-b".into(),
        other => panic!("request judged by a mix of policies: {other:?}"),
    }
}

fn hs256(secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hmac".into());
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "s", "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(secret).expect("key"),
    )
    .expect("token")
}

#[tokio::test]
async fn pod_labels_choose_between_bundle_policies_live() {
    let mut b = BundleBench::start("a").await;
    let idp = b.bench.idp.clone();
    b.policies.publish(&[
        (
            "pa.yaml",
            &rendered("pa", "a", "2026-01-01T00:00:00Z", &idp, "X-A"),
        ),
        (
            "pb.yaml",
            &rendered("pb", "b", "2026-01-01T00:00:00Z", &idp, "X-B"),
        ),
    ]);
    b.eventually("x-a").await;
    b.set_app("b");
    b.eventually("x-b").await;
    b.set_app("c");
    b.eventually("NoPolicy").await;
    b.set_app("a");
    b.eventually("x-a").await;
}

#[tokio::test]
async fn a_bundle_appearing_late_and_policies_added_and_removed_live() {
    let mut b = BundleBench::start("a").await;
    let idp = b.bench.idp.clone();
    // No bundle directory at start: running, not ready, NoPolicy.
    assert!(!b.bench.sidecar.ready());
    assert_eq!(b.outcome().await, "NoPolicy");
    assert_eq!(b.errors(), 0.0, "an absent bundle is not an error");

    b.policies.publish(&[(
        "pb.yaml",
        &rendered("pb", "b", "2026-01-01T00:00:00Z", &idp, "X-B"),
    )]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.outcome().await, "NoPolicy", "pb selects other pods");

    b.policies.publish(&[
        (
            "pb.yaml",
            &rendered("pb", "b", "2026-01-01T00:00:00Z", &idp, "X-B"),
        ),
        (
            "pa.yaml",
            &rendered("pa", "a", "2026-01-02T00:00:00Z", &idp, "X-A"),
        ),
    ]);
    b.eventually("x-a").await;
    b.bench.wait_ready().await;

    b.policies.publish(&[(
        "pb.yaml",
        &rendered("pb", "b", "2026-01-01T00:00:00Z", &idp, "X-B"),
    )]);
    b.eventually("NoPolicy").await;
    assert!(!b.bench.sidecar.ready(), "no policy, not ready");
}

#[tokio::test]
async fn a_broken_file_is_skipped_and_the_policy_in_force_keeps_its_last_good_version() {
    let mut b = BundleBench::start("a").await;
    let idp = b.bench.idp.clone();
    let older = rendered("older", "a", "2026-01-01T00:00:00Z", &idp, "X-A");
    b.policies.publish(&[
        (
            "broken.yaml",
            "apiVersion: tokengate.dev/v1alpha1\nkind: [oops",
        ),
        ("older.yaml", &older),
        (
            "invalid.yaml",
            &rendered("invalid", "a", "2025-01-01T00:00:00Z", &idp, "Host"),
        ),
    ]);
    // The oldest policy is invalid and the other file does not parse: the good one applies.
    b.eventually("x-a").await;
    assert!(b.errors() >= 2.0, "both bad files counted: {}", b.errors());

    // The policy in force becomes invalid: its last good version stays.
    let errors = b.errors();
    b.policies.publish(&[
        (
            "broken.yaml",
            "apiVersion: tokengate.dev/v1alpha1\nkind: [oops",
        ),
        (
            "older.yaml",
            &older.replace("matchLabels: {app: a}", "matchLabels: {}"),
        ),
    ]);
    wait_until("invalid version noticed", async || b.errors() > errors).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.outcome().await, "x-a");

    // Fixed, it applies again.
    b.policies.publish(&[(
        "older.yaml",
        &rendered("older", "a", "2026-01-01T00:00:00Z", &idp, "X-B"),
    )]);
    b.eventually("x-b").await;
}

#[tokio::test]
async fn several_matching_policies_resolve_to_the_oldest_then_by_name() {
    let mut b = BundleBench::start("a").await;
    let idp = b.bench.idp.clone();
    b.policies.publish(&[
        (
            "alpha.yaml",
            &rendered("alpha", "a", "2026-03-01T00:00:00Z", &idp, "X-A"),
        ),
        (
            "zeta.yaml",
            &rendered("zeta", "a", "2026-02-01T00:00:00Z", &idp, "X-B"),
        ),
    ]);
    b.eventually("x-b").await;
    let active = b.bench.sidecar.gate.active();
    assert_eq!(
        active.map(|a| a.policy.name.clone()).as_deref(),
        Some("zeta")
    );
    let conflict = |b: &BundleBench, applied: &str, ignored: &str| {
        b.bench.metric(
            "tokengate_policy_conflicts",
            &[("applied", applied), ("ignored", ignored)],
        )
    };
    assert_eq!(conflict(&b, "zeta", "alpha"), 1.0);

    // With a conflict, fetched keys, a refusal and a cached token, every sidecar panel of the
    // chart's dashboard has something to show.
    let token = b.bench.idp.token(Algorithm::RS256);
    for _ in 0..2 {
        assert_eq!(
            b.bench.get_with_token("/", &token).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(b.bench.get("/", &[]).await.status, StatusCode::UNAUTHORIZED);
    let exposition = String::from_utf8_lossy(&b.bench.admin_get("/metrics").await.body).to_string();
    let selectors = dashboard::selectors(&dashboard::path()).expect("the chart's dashboard");
    let unanswered = dashboard::unanswered(&selectors, dashboard::Component::Sidecar, &exposition);
    assert!(unanswered.is_empty(), "{unanswered:#?}\n{exposition}");

    // Same age: the name decides.
    b.policies.publish(&[
        (
            "alpha.yaml",
            &rendered("alpha", "a", "2026-02-01T00:00:00Z", &idp, "X-A"),
        ),
        (
            "zeta.yaml",
            &rendered("zeta", "a", "2026-02-01T00:00:00Z", &idp, "X-B"),
        ),
    ]);
    b.eventually("x-a").await;
    assert_eq!(conflict(&b, "alpha", "zeta"), 1.0);
    assert_eq!(
        conflict(&b, "zeta", "alpha"),
        0.0,
        "the old conflict is cleared"
    );

    // One of them no longer selects the pod: no conflict left.
    b.policies.publish(&[
        (
            "alpha.yaml",
            &rendered("alpha", "a", "2026-02-01T00:00:00Z", &idp, "X-A"),
        ),
        (
            "zeta.yaml",
            &rendered("zeta", "other", "2026-02-01T00:00:00Z", &idp, "X-B"),
        ),
    ]);
    wait_until("conflict resolved", async || {
        conflict(&b, "alpha", "zeta") == 0.0
    })
    .await;
    assert_eq!(b.outcome().await, "x-a");
}

#[tokio::test]
async fn secret_ref_keys_come_from_the_bundle_and_rotate_with_a_data_swap() {
    let mut b = BundleBench::start("a").await;
    let (old_secret, new_secret) = ([7u8; 32], [9u8; 32]);
    let (old_token, new_token) = (hs256(&old_secret), hs256(&new_secret));

    // The Secret is not there yet: the policy is invalid, with an error naming it.
    b.policies
        .publish(&[("hmac.yaml", &hmac_policy("hmac", "signing"))]);
    wait_until("missing secret reported", async || b.errors() >= 1.0).await;
    assert_eq!(outcome_of(&b.bench, &old_token).await, "NoPolicy");

    b.keys
        .publish(&[("hmac.signing", &STANDARD.encode(old_secret))]);
    wait_until("secret applied", async || {
        b.bench.get_with_token("/", &old_token).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(
        b.bench.get_with_token("/", &new_token).await.reason(),
        "TokenSignatureInvalid"
    );

    // Rotation: kubelet swaps `..data` to a version holding the new key.
    b.keys.publish(&[(
        "hmac.signing",
        &format!("{}\n", STANDARD.encode(new_secret)),
    )]);
    wait_until("rotated key applied", async || {
        b.bench.get_with_token("/", &new_token).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(
        b.bench.get_with_token("/", &old_token).await.reason(),
        "TokenSignatureInvalid",
        "the old key is gone, also for tokens it verified before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_through_the_bundle_lose_no_request() {
    let mut b = BundleBench::start("a").await;
    let idp = b.bench.idp.clone();
    let version = |header: &str| rendered("pa", "a", "2026-01-01T00:00:00Z", &idp, header);
    let other = rendered("pb", "b", "2026-01-01T00:00:00Z", &idp, "X-B");
    b.policies
        .publish(&[("pa.yaml", &version("X-A")), ("pb.yaml", &other)]);
    b.eventually("x-a").await;
    b.bench.wait_ready().await;

    let bench = Arc::new(b.bench);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (bench, stop, seen) = (Arc::clone(&bench), Arc::clone(&stop), Arc::clone(&seen));
        let token = idp.token(Algorithm::RS256);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match outcome_of(&bench, &token).await.as_str() {
                    "x-a" => seen[0].fetch_add(1, Ordering::Relaxed),
                    "x-b" => seen[1].fetch_add(1, Ordering::Relaxed),
                    other => panic!("request failed during a swap: {other}"),
                };
            }
        }));
    }
    for n in 1..=60u32 {
        let header = if n % 2 == 0 { "X-A" } else { "X-B" };
        if n == 30 {
            // A broken version in the middle: the last good one keeps serving.
            b.policies
                .publish(&[("pa.yaml", "kind: [broken"), ("pb.yaml", &other)]);
        } else {
            b.policies
                .publish(&[("pa.yaml", &version(header)), ("pb.yaml", &other)]);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("no request failed");
    }
    let (a, bb) = (
        seen[0].load(Ordering::Relaxed),
        seen[1].load(Ordering::Relaxed),
    );
    println!(
        "{} requests during 60 bundle swaps: {a} judged by X-A, {bb} by X-B",
        a + bb
    );
    assert!(a > 0 && bb > 0, "both versions applied: {a} / {bb}");
    let errors = bench.metric("tokengate_policy_reloads_total", &[("result", "error")]);
    assert!(errors >= 1.0, "the broken version was counted");
}
