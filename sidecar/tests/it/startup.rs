//! `--startup failClosed|wait` with the identity provider down at start and up a moment later.

use std::time::{Duration, Instant};

use crate::support::{Bench, wait_until};
use http::StatusCode;
use jsonwebtoken::Algorithm;
use tokengate_sidecar::gate::StartupMode;
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::IdentityProvider;

/// A sidecar started while the provider's key endpoints answer 503.
async fn start(mode: StartupMode, timeout: Duration) -> Bench {
    let idp = IdentityProvider::start().await.expect("provider");
    idp.set_available(false);
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        crate::support::manifest(
            "bench",
            &format!(
                "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n",
                idp.discovery_url()
            ),
        ),
    )
    .expect("policy");
    let mut config = crate::support::config(vec![file], &echo);
    config.startup = mode;
    config.startup_timeout = timeout;
    Bench::with_config(idp, echo, dir, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_holds_early_requests_until_the_keys_arrive() {
    let bench = std::sync::Arc::new(start(StartupMode::Wait, Duration::from_secs(10)).await);
    let token = bench.idp.token(Algorithm::RS256);
    let early = {
        let (bench, token) = (std::sync::Arc::clone(&bench), token.clone());
        tokio::spawn(async move { bench.get_with_token("/", &token).await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!early.is_finished(), "the early request waits for keys");
    assert!(!bench.sidecar.ready());
    let ready = bench.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    let up = Instant::now();
    bench.idp.set_available(true);
    let reply = early.await.expect("request task");
    assert_eq!(reply.status, StatusCode::OK, "judged once the keys came");
    println!(
        "early request answered {:?} after the provider came up",
        up.elapsed()
    );
    assert!(bench.sidecar.ready());
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_bounded_by_the_startup_timeout() {
    let bench = start(StartupMode::Wait, Duration::from_millis(800)).await;
    let token = bench.idp.token(Algorithm::RS256);
    let sent = Instant::now();
    let reply = bench.get_with_token("/", &token).await;
    let waited = sent.elapsed();
    assert_eq!(reply.reason(), "KeysUnavailable");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The window is over: refused at once from now on.
    let sent = Instant::now();
    assert_eq!(
        bench.get_with_token("/", &token).await.reason(),
        "KeysUnavailable"
    );
    assert!(sent.elapsed() < Duration::from_millis(500));

    bench.idp.set_available(true);
    wait_until("keys arrived", async || bench.sidecar.ready()).await;
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn fail_closed_refuses_early_requests_at_once() {
    let bench = start(StartupMode::FailClosed, Duration::from_secs(10)).await;
    let token = bench.idp.token(Algorithm::RS256);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.reason(), "KeysUnavailable");
    // Held for the startup timeout it would take 10 s.
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert!(!bench.sidecar.ready());

    bench.idp.set_available(true);
    wait_until("keys arrived", async || bench.sidecar.ready()).await;
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
}
