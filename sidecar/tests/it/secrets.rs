//! Secrets never leave the sidecar through its own outputs: the `tokengate-sidecar` binary,
//! logging at debug level as JSON, is sent valid, expired, forged, oversized and duplicated
//! tokens in every source, refused paths and overrides, and credentials of other schemes; then
//! its logs, its metrics and every response it wrote itself are searched for each token, each
//! token's payload and signature, the HMAC key and the credentials.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::{IdentityProvider, KeyFamily, SignWith};

use crate::raw::RawClient;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn send(addr: SocketAddr, request: String) -> (u16, String) {
    let mut client = RawClient::connect(addr).await;
    client.send(request.as_bytes()).await;
    match client.response().await {
        Some(response) => {
            let mut text = String::new();
            for (name, value) in &response.headers {
                text.push_str(&format!("{name}: {value}\n"));
            }
            text.push_str(&response.text());
            (response.status, text)
        }
        None => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_metrics_and_refusals() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let hmac = idp.hmac_secret_base64();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        crate::support::manifest(
            "secrets",
            &format!(
                "  token: {{queryParameter: access_token, cookie: session, maxLength: 2048}}\n  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    issuerSigningKeys: [{{value: \"{hmac}\"}}]\n    requiredClaims: [{{name: scp}}]\n  forwarding:\n    claimsToHeaders: [{{claim: sub, header: X-User-Id}}]\n  rules:\n    - {{paths: [\"/public/*\"], authentication: Disabled}}\n",
                idp.discovery_url()
            ),
        ),
    )
    .expect("policy");
    let (port, admin_port) = (free_port(), free_port());
    let log = dir.path().join("sidecar.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate-sidecar"))
        .args(["run", "--log-format", "json", "--policy"])
        .arg(&policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        .args(["--upstream", &echo.url()])
        .env(
            "TOKENGATE_LOG",
            std::env::var("TOKENGATE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("sidecar starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && send(admin, "GET /ready HTTP/1.1\r\nHost: a\r\n\r\n".into())
                .await
                .0
                == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "sidecar not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut claims = idp.claims();
    claims["scp"] = json!("orders.read");
    let valid = idp.sign(Algorithm::RS256, &claims);
    let hmac_token = idp.sign(Algorithm::HS256, &claims);
    let no_scope = idp.token(Algorithm::ES256);
    let mut old = claims.clone();
    old["exp"] = json!(1_000_000_000);
    old["iat"] = json!(999_000_000);
    old["nbf"] = json!(999_000_000);
    let expired = idp.sign(Algorithm::RS256, &old);
    let forged = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        let mut admin = claims.clone();
        admin["roles"] = json!(["Admin"]);
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(admin.to_string());
        parts.join(".")
    };
    let wrong_key = idp.sign_with_header(
        &json!({"alg": "HS256", "kid": "shared"}),
        &claims,
        SignWith::Secret(
            b"not-the-shared-secret-but-long-enough".to_vec(),
            Algorithm::HS256,
        ),
    );
    let unpublished = idp.add_unpublished_key(KeyFamily::Rsa);
    let unknown_kid = idp.sign_with_kid(&unpublished, Algorithm::RS256, &claims);
    let oversized = format!("{valid}{}", "A".repeat(3000));
    let basic = STANDARD.encode("alice:correct-horse-battery-staple");

    let get = |target: &str, headers: &[String]| {
        let mut text = format!("GET {target} HTTP/1.1\r\nHost: app.example\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text
    };
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let requests: Vec<(u16, String)> = vec![
        (200, get("/orders", &[bearer(&valid)])),
        (200, get("/orders", &[bearer(&hmac_token)])),
        (200, get(&format!("/orders?access_token={valid}"), &[])),
        (200, get("/orders", &[format!("Cookie: session={valid}")])),
        (401, get("/orders", &[bearer(&no_scope)])),
        (401, get("/orders", &[bearer(&expired)])),
        (401, get("/orders", &[bearer(&forged)])),
        (401, get("/orders", &[bearer(&wrong_key)])),
        (401, get("/orders", &[bearer(&unknown_kid)])),
        (401, get("/orders", &[bearer(&oversized)])),
        (
            401,
            get(&format!("/orders?access_token={forged}"), &[bearer(&valid)]),
        ),
        (
            401,
            get(
                "/orders",
                &[bearer(&valid), format!("Cookie: session={expired}")],
            ),
        ),
        (401, get("/orders", &[bearer(&valid), bearer(&forged)])),
        (
            401,
            get("/orders", &[format!("Authorization: Basic {basic}")]),
        ),
        (400, get(&format!("/a%2Fb?access_token={valid}"), &[])),
        (
            400,
            get(
                "/orders",
                &[bearer(&valid), "X-HTTP-Method-Override: DELETE".into()],
            ),
        ),
        (200, get("/public/x", &[bearer(&forged)])),
        (
            200,
            get("/public/x", &[format!("Authorization: Basic {basic}")]),
        ),
    ];
    let mut sidecar_output = String::new();
    for (expected, request) in &requests {
        let (status, response) = send(addr, request.clone()).await;
        let first_line = request.lines().next().unwrap_or_default();
        let shown: String = first_line.chars().take(60).collect();
        assert_eq!(status, *expected, "{shown}: {response}");
        if status != 200 {
            // Written by the sidecar itself (a 200 is the echo application's).
            sidecar_output.push_str(&response);
        }
    }
    let metrics = send(admin, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".into())
        .await
        .1;
    let ready = send(admin, "GET /ready HTTP/1.1\r\nHost: a\r\n\r\n".into())
        .await
        .1;
    let _ = child.kill().await;
    let logs = std::fs::read_to_string(&log).expect("logs");
    assert!(
        logs.contains("request refused"),
        "debug logs were written:\n{logs}"
    );

    let raw_hmac = STANDARD.decode(&hmac).expect("base64 key");
    let mut secrets: Vec<(&str, String)> = vec![
        ("HMAC key (base64)", hmac.clone()),
        ("Basic credentials", basic.clone()),
        ("Basic password", "correct-horse-battery-staple".into()),
    ];
    if let Ok(text) = String::from_utf8(raw_hmac) {
        secrets.push(("HMAC key", text));
    }
    for (name, token) in [
        ("valid token", &valid),
        ("HMAC-signed token", &hmac_token),
        ("token without scope", &no_scope),
        ("expired token", &expired),
        ("forged token", &forged),
        ("token signed with another key", &wrong_key),
        ("token with an unknown kid", &unknown_kid),
    ] {
        let mut parts = token.split('.');
        let (_, payload, signature) = (parts.next(), parts.next(), parts.next());
        secrets.push((name, token.clone()));
        secrets.push((name, payload.unwrap_or_default().to_owned()));
        secrets.push((name, signature.unwrap_or_default().to_owned()));
    }
    for (source, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("readiness", &ready),
        ("refusals", &sidecar_output),
    ] {
        for (name, secret) in &secrets {
            if secret.len() >= 8 {
                assert!(
                    !text.contains(secret.as_str()),
                    "{name} appears in the {source}"
                );
            }
        }
    }
}
