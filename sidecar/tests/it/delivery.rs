//! Keys delivered by the operator (`spec.keyDelivery`): the bundle's DIR/jwks (ConfigMap
//! `tokengate-jwks`) holds the public keys the operator fetched, and the sidecar takes them as
//! its key sources' keys, fetching itself only as the mode allows. The identity provider counts
//! every fetch, and refuses the sidecar's (by its `User-Agent`) where the test says the sidecar
//! cannot reach it.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use jsonwebtoken::Algorithm;
use tokengate_keys::SourceKeys;
use tokengate_policy::RemoteKeySource;
use tokengate_policy::contract;
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily};

use crate::support::{Bench, Projected, wait_until};

const SIDECAR: &str = "tokengate-sidecar";

/// The policy `orders` as the operator renders it, on the provider's JWKS URL, with
/// `keyDelivery: <mode>` (none: the default).
fn policy(idp: &IdentityProvider, mode: Option<&str>) -> String {
    let delivery = mode.map_or(String::new(), |mode| format!("  keyDelivery: {mode}\n"));
    format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  name: orders\n  namespace: shop\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  selector:\n    matchLabels: {{app: orders}}\n{delivery}  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.jwks_url()
    )
}

/// The provider's key set as the operator delivers it, fetched `age` ago.
fn delivered(idp: &IdentityProvider, age: Duration) -> (String, String) {
    let source = RemoteKeySource::Jwks(idp.jwks_url());
    let fetched = SystemTime::now() - age;
    let keys = SourceKeys::from_jwks(idp.jwks(), &idp.jwks_url(), None, fetched)
        .expect("the provider's key set is usable");
    (
        contract::jwks_file_name(&source),
        tokengate_keys::delivery::render(&source, &keys).expect("document"),
    )
}

struct Delivery {
    bench: Bench,
    jwks: Projected,
}

impl Delivery {
    /// A sidecar on a bundle with `policy` and, in DIR/jwks, `jwks` (files), started with the
    /// provider refusing the sidecar's fetches when `refused`.
    async fn start(
        mode: Option<&str>,
        refused: bool,
        jwks: impl FnOnce(&IdentityProvider) -> Vec<(String, String)>,
        max_stale: Duration,
    ) -> Self {
        let idp = IdentityProvider::start().await.expect("provider");
        if refused {
            idp.refuse_clients(&[SIDECAR]);
        }
        let echo = EchoServer::start().await.expect("echo");
        let dir = tempfile::tempdir().expect("dir");
        let bundle = dir.path().join("bundle");
        let mut labels = Projected::new(dir.path().join("podinfo"));
        labels.publish(&[("labels", "app=\"orders\"\n")]);
        let mut policies = Projected::new(bundle.join(contract::BUNDLE_POLICIES_DIR));
        policies.publish(&[("orders.yaml", &policy(&idp, mode))]);
        let mut delivered = Projected::new(bundle.join(contract::BUNDLE_JWKS_DIR));
        let files = jwks(&idp);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str()))
            .collect();
        delivered.publish(&files);
        let mut config = crate::support::config(Vec::new(), &echo);
        config.bundle = Some(bundle);
        config.pod_labels = Some(labels.dir.join("labels"));
        config.reload_interval = Duration::from_millis(20);
        config.keys.max_stale = max_stale;
        let bench = Bench::with_config(idp, echo, dir, config).await;
        Self {
            bench,
            jwks: delivered,
        }
    }

    fn idp(&self) -> &IdentityProvider {
        &self.bench.idp
    }

    /// HTTP status and refusal reason of a request with `token`.
    async fn outcome(&self, token: &str) -> (StatusCode, String) {
        let reply = self.bench.get_with_token("/orders", token).await;
        (reply.status, reply.reason())
    }

    /// Publishes the provider's current key set in the bundle, as the operator's next refresh.
    fn redeliver(&mut self) {
        let (name, text) = delivered(self.idp(), Duration::ZERO);
        self.jwks.publish(&[(&name, &text)]);
    }

    fn sidecar_fetches(&self) -> u64 {
        self.idp().jwks_fetches_by(SIDECAR)
    }

    fn refused_for_unknown_key(&self) -> f64 {
        self.bench.metric(
            "tokengate_requests_total",
            &[("reason", "TokenSignatureKeyNotFound")],
        )
    }
}

fn fresh(idp: &IdentityProvider) -> Vec<(String, String)> {
    vec![delivered(idp, Duration::ZERO)]
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn operator_mode_is_ready_from_the_bundle_alone_and_follows_rotations_without_fetching() {
    let mut d = Delivery::start(Some("Operator"), true, fresh, DAY).await;
    d.bench.wait_ready().await;
    let before = d.idp().current_kid(KeyFamily::Rsa);
    let old_token = d.idp().token(Algorithm::RS256);
    assert_eq!(d.outcome(&old_token).await, (StatusCode::OK, String::new()));

    // The provider rotates: a token signed with the new key is refused until the operator's
    // next refresh brings the key, and the sidecar does not go and fetch it.
    let rotated = d.idp().rotate(KeyFamily::Rsa);
    assert_ne!(rotated, before);
    let new_token = d.idp().token(Algorithm::RS256);
    let (status, reason) = d.outcome(&new_token).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "TokenSignatureKeyNotFound")
    );
    assert!(d.refused_for_unknown_key() >= 1.0, "refusals are counted");

    d.redeliver();
    wait_until("the rotated key to arrive through the bundle", async || {
        d.outcome(&new_token).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        d.outcome(&old_token).await.0,
        StatusCode::OK,
        "the old key stays"
    );

    // A kid the provider never published: refused, still without a fetch.
    let unknown = d.idp().add_unpublished_key(KeyFamily::Rsa);
    let forged = d
        .idp()
        .sign_with_kid(&unknown, Algorithm::RS256, &d.idp().claims());
    assert_eq!(
        d.outcome(&forged).await,
        (
            StatusCode::UNAUTHORIZED,
            "TokenSignatureKeyNotFound".to_owned()
        )
    );
    assert_eq!(
        d.sidecar_fetches(),
        0,
        "{:?}",
        d.idp().jwks_fetches_by_client()
    );
    assert_eq!(d.idp().discovery_fetches(), 0);
    let source = d.idp().jwks_url();
    // The fetch counter exists at 0 (a dashboard shows "no fetches", not "no data").
    let exposition = d.bench.sidecar.metrics.render();
    let samples = tokengate_testkit::metrics::samples(&exposition);
    assert!(
        samples
            .iter()
            .any(|sample| sample.name == "tokengate_jwks_fetch_total"
                && sample
                    .labels
                    .contains(&("source".to_owned(), source.clone()))
                && sample.value == 0.0),
        "{exposition}"
    );
    assert!(
        d.bench
            .metric("tokengate_keys_delivered_total", &[("source", &source)])
            >= 2.0
    );
}

#[tokio::test]
async fn the_fallback_fetches_once_per_cooldown_for_a_key_the_bundle_lacks() {
    // Default mode: OperatorWithFallback. The test configuration's miss cooldown is 1s.
    let d = Delivery::start(None, false, fresh, DAY).await;
    d.bench.wait_ready().await;
    let token = d.idp().token(Algorithm::RS256);
    assert_eq!(d.outcome(&token).await.0, StatusCode::OK);
    assert_eq!(
        d.sidecar_fetches(),
        0,
        "ready from the bundle, nothing fetched"
    );

    // An unknown kid: one refetch, then remembered (the negative cache): no second fetch.
    let unknown = d.idp().add_unpublished_key(KeyFamily::Rsa);
    let forged = d
        .idp()
        .sign_with_kid(&unknown, Algorithm::RS256, &d.idp().claims());
    for _ in 0..5 {
        assert_eq!(d.outcome(&forged).await.1, "TokenSignatureKeyNotFound");
    }
    assert_eq!(d.sidecar_fetches(), 1);

    // A rotation the bundle has not caught up with: the sidecar finds the key itself (the
    // cooldown passed first), and keeps the newer keys it fetched.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.idp().rotate(KeyFamily::Rsa);
    let rotated = d.idp().token(Algorithm::RS256);
    assert_eq!(d.outcome(&rotated).await.0, StatusCode::OK);
    assert_eq!(d.outcome(&token).await.0, StatusCode::OK);
    assert_eq!(d.sidecar_fetches(), 2);
}

#[tokio::test]
async fn without_fresh_bundle_keys_the_fallback_fetches_and_operator_mode_is_not_ready() {
    // Nothing delivered for the source: the fallback fetches at once, as a sidecar alone would.
    let d = Delivery::start(None, false, |_| Vec::new(), DAY).await;
    d.bench.wait_ready().await;
    assert_eq!(d.sidecar_fetches(), 1);
    drop(d);

    // Delivered keys older than the maximum stale age: the fallback fetches too.
    let stale = |idp: &IdentityProvider| vec![delivered(idp, Duration::from_secs(120))];
    let d = Delivery::start(None, false, stale, Duration::from_secs(60)).await;
    d.bench.wait_ready().await;
    assert_eq!(d.sidecar_fetches(), 1);
    drop(d);

    // Operator mode: stale keys are no keys; the sidecar says so, and never fetches.
    let mut d = Delivery::start(Some("Operator"), false, stale, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!d.bench.sidecar.ready());
    let token = d.idp().token(Algorithm::RS256);
    let (status, reason) = d.outcome(&token).await;
    assert_eq!(reason, "KeysUnavailable", "HTTP {status}");
    d.redeliver();
    d.bench.wait_ready().await;
    assert_eq!(d.outcome(&token).await.0, StatusCode::OK);
    assert_eq!(d.sidecar_fetches(), 0);
}

#[tokio::test]
async fn a_bad_delivered_document_is_skipped_and_the_keys_in_hand_stay() {
    let mut d = Delivery::start(Some("Operator"), true, fresh, DAY).await;
    d.bench.wait_ready().await;
    let token = d.idp().token(Algorithm::RS256);
    let (name, _) = delivered(d.idp(), Duration::ZERO);
    d.jwks.publish(&[(&name, "{\"source\": 1}")]);
    // Several reload polls later, the keys delivered before still verify.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(d.outcome(&token).await.0, StatusCode::OK);
    assert!(d.bench.sidecar.ready());
}
