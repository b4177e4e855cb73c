//! Faults against real servers: keys rotated under a running sidecar, floods of unknown kids.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use support::Bench;
use tokengate_tests::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily};

/// The miss cooldown in the bench configuration.
const COOLDOWN: Duration = Duration::from_secs(1);

fn discovery(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.discovery_url()
    )
}

/// A valid token with its header replaced by one naming `kid`: the kid is looked up before the
/// signature is checked, so this exercises the unknown-kid path.
fn with_kid(token: &str, kid: &str) -> String {
    let rest = token.split_once('.').map(|(_, rest)| rest).unwrap_or(token);
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#);
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))
}

#[tokio::test]
async fn a_key_published_after_start_is_accepted_on_first_use() {
    let bench = Bench::start(discovery).await;
    let before = bench.idp.jwks_fetches();
    bench.idp.rotate(KeyFamily::Rsa);
    let token = bench.idp.token(Algorithm::RS256);
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(bench.idp.jwks_fetches() - before, 1, "exactly one refetch");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let bench = Arc::new(Bench::start(discovery).await);
    let valid = bench.idp.token(Algorithm::RS256);
    let before = bench.idp.jwks_fetches();
    let started = Instant::now();
    for batch in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let bench = Arc::clone(&bench);
            let token = with_kid(&valid, &format!("random-{batch}-{i}"));
            tasks.push(tokio::spawn(async move {
                bench.get_with_token("/", &token).await.status
            }));
        }
        for task in tasks {
            let status = task.await.expect("request task");
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    let elapsed = started.elapsed();
    let fetches = bench.idp.jwks_fetches() - before;
    let allowed = elapsed.as_secs_f64().div_euclid(COOLDOWN.as_secs_f64()) as u64 + 2;
    println!("1000 random-kid requests in {elapsed:?}: {fetches} JWKS fetches (allowed {allowed})");
    assert!(fetches <= allowed, "{fetches} fetches in {elapsed:?}");
    // Known keys still work after the flood.
    let reply = bench.get_with_token("/", &valid).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Kills the sidecar if the test fails before it exits.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let idp = IdentityProvider::start().await.expect("provider");
    let echo = tokengate_tests::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, support::manifest("term", &discovery(&idp))).expect("policy");
    let (listen, admin) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate-sidecar"))
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &echo.url()])
        .env("TOKENGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sidecar binary starts");
    let mut guard = ChildGuard(child);
    let pid = guard.0.id();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http::Request::get(format!("http://127.0.0.1:{admin}/ready"))
            .body(Full::default())
            .expect("request");
        if let Ok(resp) = client.request(ready).await
            && resp.status() == StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "sidecar not ready in 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = idp.token(Algorithm::ES256);
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        let request = http::Request::get(format!("http://127.0.0.1:{listen}/slow"))
            .header("authorization", format!("Bearer {token}"))
            .header(tokengate_tests::echo::DELAY_HEADER, "1000")
            .body(Full::default())
            .expect("request");
        in_flight.push(tokio::spawn(async move {
            client.request(request).await.map(|r| r.status())
        }));
    }
    // Let the requests reach the upstream before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut completed = 0;
    for task in in_flight {
        let status = task.await.expect("task").expect("in-flight request completes");
        assert_eq!(status, StatusCode::OK);
        completed += 1;
    }
    println!("SIGTERM: {completed}/20 in-flight requests completed");
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = guard.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < exit_deadline, "sidecar did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .is_err(),
        "new connections are refused after shutdown"
    );
}
