//! Real faults against real servers: identity provider down, keys rotated, sources failing,
//! a flood of made-up key ids, SIGTERM under load.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Bench;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokengate_testkit::echo::{DELAY_HEADER, EchoServer};
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily, SignWith};

fn jwks(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.jwks_url()
    )
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn provider_down_at_start_then_up() {
    let idp = IdentityProvider::start().await.expect("provider");
    idp.set_available(false);
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, crate::support::manifest("bench", &jwks(&idp))).expect("policy");
    let sidecar = tokengate_sidecar::start(crate::support::config(vec![file], &echo))
        .await
        .expect("starts without keys");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let call = || {
        let request = Request::get(format!("http://{}/", sidecar.proxy_addr))
            .header(
                "authorization",
                format!("Bearer {}", idp.token(Algorithm::RS256)),
            )
            .body(Full::default())
            .expect("request");
        client.request(request)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sidecar.ready());
    assert_eq!(
        call().await.expect("response").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    idp.set_available(true);
    until("ready after the provider came up", async || sidecar.ready()).await;
    assert_eq!(call().await.expect("response").status(), StatusCode::OK);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_key_published_after_start_works_on_first_use() {
    let bench = Bench::start(jwks).await;
    let fetches = bench.idp.jwks_fetches();
    let kid = bench.idp.rotate(KeyFamily::EcP256);
    let token = bench
        .idp
        .sign_with_kid(&kid, Algorithm::ES256, &bench.idp.claims());
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(bench.idp.jwks_fetches() - fetches, 1, "exactly one refetch");
    // Known now: no further fetches.
    for _ in 0..20 {
        assert_eq!(
            bench.get_with_token("/", &token).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(bench.idp.jwks_fetches() - fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_flood_is_bounded_by_the_cooldown() {
    let bench = std::sync::Arc::new(Bench::start(jwks).await);
    let before = bench.idp.jwks_fetches();
    let started = Instant::now();
    let mut refused = 0;
    for batch in 0..20 {
        let mut calls = Vec::new();
        for i in 0..50 {
            let token = bench.idp.sign_with_header(
                &json!({"alg": "RS256", "kid": format!("made-up-{batch}-{i}")}),
                &bench.idp.claims(),
                SignWith::Current(Algorithm::RS256),
            );
            let bench = std::sync::Arc::clone(&bench);
            calls.push(tokio::spawn(async move {
                bench.get_with_token("/", &token).await.reason()
            }));
        }
        for call in calls {
            let reason = call.await.expect("request task");
            assert_eq!(reason, "TokenSignatureKeyNotFound");
            refused += 1;
        }
    }
    let elapsed = started.elapsed();
    let fetches = bench.idp.jwks_fetches() - before;
    // The bench's cooldown is 1s.
    let allowed = elapsed.as_secs() + 1;
    println!("{refused} random-kid requests in {elapsed:?} caused {fetches} JWKS fetches");
    assert!(fetches <= allowed, "{fetches} fetches in {elapsed:?}");
    // Legitimate tokens are unaffected by the flood.
    let good = bench.idp.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &good).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn stale_keys_serve_until_the_maximum_age_then_503() {
    let bench = Bench::start_with(jwks, |config| {
        config.keys.refresh_interval = Duration::from_millis(100);
        config.keys.retry_interval = Duration::from_millis(100);
        config.keys.max_stale = Duration::from_secs(2);
    })
    .await;
    let token = bench.idp.token(Algorithm::RS256);
    bench.idp.set_available(false);
    let down_at = Instant::now();
    // Keys fetched just before the outage keep working inside the maximum age.
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    until("stale keys retired", async || {
        bench.get_with_token("/", &token).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let served_for = down_at.elapsed();
    assert!(
        served_for >= Duration::from_millis(1500),
        "retired too early: {served_for:?}"
    );
    assert_eq!(
        bench.get_with_token("/", &token).await.reason(),
        "KeysUnavailable"
    );
    bench.idp.set_available(true);
    until("keys back", async || {
        bench.get_with_token("/", &token).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn one_failing_source_does_not_hold_back_another() {
    let healthy = IdentityProvider::start().await.expect("healthy provider");
    let failing = IdentityProvider::start().await.expect("failing provider");
    failing.set_available(false);
    let (healthy_url, failing_url) = (healthy.jwks_url(), failing.jwks_url());
    let bench = Bench::start_with(
        move |_| format!("  validateJwt:\n    jwksUris: [\"{failing_url}\", \"{healthy_url}\"]\n"),
        |config| {
            config.keys.refresh_interval = Duration::from_millis(200);
        },
    )
    .await;
    let token = healthy.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    // The healthy source keeps refreshing: a key it rotates in is picked up.
    let kid = healthy.rotate(KeyFamily::Rsa);
    let rotated = healthy.sign_with_kid(&kid, Algorithm::RS256, &healthy.claims());
    until("rotated key used", async || {
        bench.get_with_token("/", &rotated).await.status == StatusCode::OK
    })
    .await;
    assert!(failing.jwks_fetches() >= 2, "the failing source is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, crate::support::manifest("bench", &jwks(&idp))).expect("policy");
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (listen, admin) = (port(), port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate-sidecar"))
        .args(["run", "--policy"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &echo.url(), "--drain-timeout", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sidecar binary");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let token = idp.token(Algorithm::RS256);
    until("sidecar ready", async || {
        let request = Request::get(format!("http://127.0.0.1:{admin}/ready"))
            .body(Full::default())
            .expect("request");
        matches!(client.request(request).await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;

    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let request = Request::get(format!("http://127.0.0.1:{listen}/slow"))
            .header("authorization", format!("Bearer {token}"))
            .header(DELAY_HEADER, "1000")
            .body(Full::default())
            .expect("request");
        in_flight.push(tokio::spawn(client.request(request)));
    }
    until("requests reached the application", async || {
        echo.requests() >= 20
    })
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let mut ok = 0;
    for request in in_flight {
        let response = request
            .await
            .expect("task")
            .expect("in-flight request completed");
        assert_eq!(response.status(), StatusCode::OK);
        ok += 1;
    }
    assert_eq!(ok, 20);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("exit status");
    assert!(status.success(), "sidecar exited with {status}");
    let after = std::net::TcpStream::connect(("127.0.0.1", listen));
    assert!(after.is_err(), "still accepting after shutdown");
}

/// The negative kid cache: a kid still unknown after a refetch is refused at once for the
/// cooldown, without waiting on or triggering fetches, even once the source's own cooldown has
/// passed; when a later fetch brings the kid, it is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kid_unknown_after_a_refetch_is_refused_at_once_for_the_cooldown() {
    const COOLDOWN: Duration = Duration::from_secs(5);
    const FETCH_DELAY: Duration = Duration::from_secs(4);
    let bench = std::sync::Arc::new(
        Bench::start_with(jwks, |config| {
            config.keys.miss_cooldown = COOLDOWN;
            config.keys.fetch_timeout = FETCH_DELAY * 2;
        })
        .await,
    );
    let kid = bench.idp.add_unpublished_key(KeyFamily::Rsa);
    let token = bench
        .idp
        .sign_with_kid(&kid, Algorithm::RS256, &bench.idp.claims());
    // A slow provider: the refetch this kid causes takes FETCH_DELAY, so the kid is remembered
    // until about FETCH_DELAY + COOLDOWN, while the source may refetch again from COOLDOWN on.
    // The windows are wide so that a busy machine cannot push a step out of its window.
    bench.idp.set_delay(Some(FETCH_DELAY));
    let before = bench.idp.jwks_fetches();
    let started = Instant::now();
    assert_eq!(
        bench.get_with_token("/", &token).await.reason(),
        "TokenSignatureKeyNotFound"
    );
    assert_eq!(bench.idp.jwks_fetches() - before, 1);
    let until_due = (COOLDOWN + Duration::from_millis(150)).saturating_sub(started.elapsed());
    tokio::time::sleep(until_due).await;

    // Past the source's cooldown, inside the kid's: a flood waits for nothing, fetches nothing.
    let flood = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..100 {
        let (bench, token) = (std::sync::Arc::clone(&bench), token.clone());
        calls.push(tokio::spawn(async move {
            bench.get_with_token("/", &token).await.reason()
        }));
    }
    for call in calls {
        assert_eq!(call.await.expect("task"), "TokenSignatureKeyNotFound");
    }
    let took = flood.elapsed();
    println!("100 requests with a remembered unknown kid answered in {took:?}");
    // A request that waited on a fetch would take FETCH_DELAY.
    assert!(took < FETCH_DELAY - Duration::from_millis(500), "{took:?}");
    assert_eq!(
        bench.idp.jwks_fetches() - before,
        1,
        "no fetch for a remembered kid"
    );

    // The kid is published and a later fetch (here the refetch another unknown kid causes)
    // brings it: served at once, although the kid is still remembered as unknown.
    bench.idp.set_delay(None);
    assert!(bench.idp.publish(&kid));
    let other = bench.idp.sign_with_header(
        &json!({"alg": "RS256", "kid": "made-up-later"}),
        &bench.idp.claims(),
        SignWith::Current(Algorithm::RS256),
    );
    assert_eq!(
        bench.get_with_token("/", &other).await.reason(),
        "TokenSignatureKeyNotFound"
    );
    assert_eq!(bench.idp.jwks_fetches() - before, 2);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    let served = started.elapsed();
    println!("published kid served {served:?} after it was first found unknown");
    assert!(
        served < FETCH_DELAY + COOLDOWN,
        "served only after the memory lapsed: {served:?}"
    );
    assert_eq!(
        bench.idp.jwks_fetches() - before,
        2,
        "served without a fetch"
    );
}
