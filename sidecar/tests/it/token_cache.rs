//! The verified-token cache through the real proxy: hits, expiry on a hit, keys leaving the key
//! set, policy reloads, oversize tokens, the bound, and route claims on cached tokens.

use std::time::Duration;

use crate::support::{Bench, wait_until};
use http::StatusCode;
use jsonwebtoken::Algorithm;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily, SignWith};

fn jwks(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n  token: {{maxLength: 16384}}\n  rules:\n    - {{paths: [\"/admin\"], requiredClaims: [{{name: roles, values: [Admin]}}]}}\n",
        idp.jwks_url()
    )
}

fn cache(bench: &Bench, result: &str) -> f64 {
    bench.metric("tokengate_token_cache_total", &[("result", result)])
}

#[tokio::test]
async fn the_second_request_is_a_hit_and_route_claims_still_apply() {
    let bench = Bench::start(jwks).await;
    let token = bench.idp.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!((cache(&bench, "miss"), cache(&bench, "hit")), (1.0, 0.0));
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.echoed().header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!((cache(&bench, "miss"), cache(&bench, "hit")), (1.0, 1.0));
    assert_eq!(bench.sidecar.gate.token_cache().len(), 1);

    // The route's own claim is checked on the cached claims, every time.
    for _ in 0..2 {
        let reply = bench.get_with_token("/admin", &token).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.reason(), "TokenClaimNotFound");
    }
    assert_eq!(cache(&bench, "hit"), 3.0);

    // Refused tokens are never kept: each attempt is verified again.
    let mut claims = bench.idp.claims();
    claims["aud"] = "api://elsewhere".into();
    let refused = bench.idp.sign(Algorithm::RS256, &claims);
    for _ in 0..2 {
        assert_eq!(
            bench.get_with_token("/", &refused).await.reason(),
            "TokenAudienceNotAllowed"
        );
    }
    assert_eq!(bench.sidecar.gate.token_cache().len(), 1);
    assert_eq!(cache(&bench, "hit"), 3.0);
}

#[tokio::test]
async fn a_cached_token_expires_on_time() {
    let bench = Bench::start(jwks).await;
    let mut claims = bench.idp.claims();
    let now = claims["iat"].as_u64().expect("iat");
    claims["exp"] = (now + 2).into();
    let token = bench.idp.sign(Algorithm::RS256, &claims);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(cache(&bench, "hit"), 1.0);

    // Past `exp` (clock skew 0): the cached entry answers TokenExpired.
    let wait = (now + 2) as f64 - tokengate_sidecar::gate::unix_now();
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0) + 0.05)).await;
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.reason(), "TokenExpired");
    assert_eq!(cache(&bench, "expired"), 1.0);
    assert_eq!(cache(&bench, "hit"), 1.0);
    assert_eq!(
        bench.sidecar.gate.token_cache().len(),
        0,
        "expired entry dropped"
    );
}

#[tokio::test]
async fn a_key_gone_from_the_key_set_refuses_the_tokens_it_verified() {
    let bench = Bench::start(jwks).await;
    let old_kid = bench.idp.current_kid(KeyFamily::Rsa);
    let token = bench.idp.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(cache(&bench, "hit"), 1.0);

    // The provider rotates and retires the old key; a token with the new kid makes the sidecar
    // refetch the key set.
    bench.idp.rotate(KeyFamily::Rsa);
    assert!(bench.idp.retire(&old_kid));
    let fresh = bench.idp.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &fresh).await.status,
        StatusCode::OK
    );

    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.reason(), "TokenSignatureKeyNotFound");
    assert_eq!(cache(&bench, "hit"), 1.0, "no hit for the retired key");
}

#[tokio::test]
async fn a_policy_reload_never_reuses_a_decision() {
    let bench = Bench::start(jwks).await;
    let token = bench.idp.token(Algorithm::RS256);
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
    assert_eq!((cache(&bench, "miss"), cache(&bench, "hit")), (1.0, 1.0));

    // The same token under a new policy version: verified again, against the new policy.
    let version = bench.sidecar.gate.version();
    let file = bench.dir.path().join("policy.yaml");
    let text = crate::support::manifest("bench", &jwks(&bench.idp))
        .replace(DEFAULT_AUDIENCE, "api://only-this-one");
    std::fs::write(&file, text).expect("policy rewritten");
    wait_until("reloaded", async || bench.sidecar.gate.version() > version).await;
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.reason(), "TokenAudienceNotAllowed");
    assert_eq!((cache(&bench, "miss"), cache(&bench, "hit")), (2.0, 1.0));
}

#[tokio::test]
async fn tokens_over_8_kib_are_not_cached() {
    let bench = Bench::start(jwks).await;
    let mut claims = bench.idp.claims();
    claims["padding"] = "p".repeat(9000).into();
    let token = bench.idp.sign(Algorithm::RS256, &claims);
    assert!(token.len() > 8 * 1024);
    for _ in 0..3 {
        assert_eq!(
            bench.get_with_token("/", &token).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(bench.sidecar.gate.token_cache().len(), 0);
    assert_eq!(cache(&bench, "hit") + cache(&bench, "miss"), 0.0);

    // Just under the limit is cached.
    claims["padding"] = "p".repeat(5000).into();
    let token = bench.idp.sign(Algorithm::RS256, &claims);
    assert!(token.len() <= 8 * 1024);
    for _ in 0..2 {
        assert_eq!(
            bench.get_with_token("/", &token).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(cache(&bench, "hit"), 1.0);
}

#[tokio::test]
async fn the_cache_keeps_its_bound_and_zero_disables_it() {
    let bench = Bench::start_with(jwks, |config| config.token_cache_entries = 64).await;
    let distinct = |i: u32| {
        let mut claims = bench.idp.claims();
        claims["jti"] = format!("token-{i}").into();
        bench.idp.sign(Algorithm::RS256, &claims)
    };
    for i in 0..200 {
        assert_eq!(
            bench.get_with_token("/", &distinct(i)).await.status,
            StatusCode::OK
        );
    }
    let held = bench.sidecar.gate.token_cache().len();
    println!("64-entry cache after 200 distinct tokens: {held} held");
    assert!((32..=64).contains(&held), "{held} entries");
    assert_eq!(cache(&bench, "evicted") as usize, 200 - held);
    assert_eq!(cache(&bench, "miss"), 200.0);

    let off = Bench::start_with(jwks, |config| config.token_cache_entries = 0).await;
    let token = off.idp.token(Algorithm::RS256);
    for _ in 0..3 {
        assert_eq!(off.get_with_token("/", &token).await.status, StatusCode::OK);
    }
    assert_eq!(off.sidecar.gate.token_cache().len(), 0);
    assert_eq!(cache(&off, "hit") + cache(&off, "miss"), 0.0);
}

/// An unsigned token accepted by policy is cached too: no key to lose, times still rechecked.
#[tokio::test]
async fn unsigned_tokens_accepted_by_policy_are_cached() {
    let bench = Bench::start(|_| {
        "  validateJwt:\n    requireSignedTokens: false\n    algorithms: [none]\n".to_owned()
    })
    .await;
    let token = bench.idp.sign_with_header(
        &serde_json::json!({"alg": "none"}),
        &bench.idp.claims(),
        SignWith::Unsigned,
    );
    for _ in 0..2 {
        assert_eq!(
            bench.get_with_token("/", &token).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(cache(&bench, "hit"), 1.0);
}

/// Memory of a full default cache: the real binary (run with `cargo test --release --test
/// token_cache -- --ignored --nocapture`), 10,000 distinct valid tokens, `VmRSS` from
/// `/proc/PID/status` before and after, with the cache on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release with --ignored"]
async fn resident_memory_with_10000_cached_tokens() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = tokengate_testkit::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, crate::support::manifest("bench", &jwks(&idp))).expect("policy");
    let tokens: Vec<String> = (0..10_000)
        .map(|i| {
            let mut claims = idp.claims();
            claims["jti"] = format!("token-{i}").into();
            claims["scp"] = "orders.read orders.write".into();
            idp.sign(Algorithm::ES256, &claims)
        })
        .collect();
    let tokens = std::sync::Arc::new(tokens);
    for entries in ["10000", "0"] {
        let mut sidecar = RunningBinary::start(&file, &echo, entries).await;
        let idle = sidecar.rss_kib();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut workers = Vec::new();
        for worker in 0..8 {
            let (client, tokens, url) = (
                client.clone(),
                std::sync::Arc::clone(&tokens),
                sidecar.url(),
            );
            workers.push(tokio::spawn(async move {
                for token in tokens.iter().skip(worker).step_by(8) {
                    let request = http::Request::get(url.clone())
                        .header("authorization", format!("Bearer {token}"))
                        .body(http_body_util::Full::default())
                        .expect("request");
                    let response = client.request(request).await.expect("response");
                    assert_eq!(response.status(), StatusCode::OK);
                    http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .expect("body");
                }
            }));
        }
        for worker in workers {
            worker.await.expect("worker");
        }
        let loaded = sidecar.rss_kib();
        println!(
            "--token-cache-entries {entries}: VmRSS {idle} KiB after start, {loaded} KiB after 10,000 distinct tokens (+{} KiB)",
            loaded.saturating_sub(idle)
        );
        sidecar.stop();
    }
}

struct RunningBinary {
    child: std::process::Child,
    listen: u16,
}

impl RunningBinary {
    async fn start(
        policy: &std::path::Path,
        echo: &tokengate_testkit::echo::EchoServer,
        entries: &str,
    ) -> Self {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("port")
        };
        let (listen, admin) = (port(), port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate-sidecar"))
            .args(["run", "--policy"])
            .arg(policy)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &echo.url(), "--token-cache-entries", entries])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sidecar binary");
        let ready = format!("http://127.0.0.1:{admin}/ready");
        wait_until("binary ready", async || {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let request = http::Request::get(ready.clone())
                .body(http_body_util::Full::default())
                .expect("request");
            matches!(client.request(request).await, Ok(r) if r.status() == StatusCode::OK)
        })
        .await;
        Self { child, listen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listen)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
