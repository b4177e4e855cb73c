//! Policy files change under a running sidecar: edits and kubelet's symlink swaps apply live,
//! invalid files keep the last good policy, and no request is lost or judged by half a policy.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Bench, manifest};
use http::StatusCode;
use jsonwebtoken::Algorithm;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider};

/// A policy whose only visible difference is the header `sub` is copied into.
fn policy(idp: &IdentityProvider, header: &str) -> String {
    manifest(
        "bench",
        &format!(
            "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n  forwarding:\n    claimsToHeaders: [{{claim: sub, header: {header}}}]\n",
            idp.discovery_url()
        ),
    )
}

/// Which of the two headers the application saw.
async fn seen_header(bench: &Bench, token: &str) -> String {
    let reply = bench.get_with_token("/", token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
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

async fn eventually(bench: &Bench, token: &str, header: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen_header(bench, token).await != header {
        assert!(Instant::now() < deadline, "{header} never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn edits_apply_live_and_invalid_files_keep_the_last_good_policy() {
    let bench = Bench::start(|idp| {
        // The bench wraps this spec in its own manifest; start from header X-A.
        policy(idp, "X-A")
            .split_once("spec:\n  selector:\n    matchLabels: {app: bench}\n")
            .map(|(_, spec)| spec.to_owned())
            .unwrap_or_default()
    })
    .await;
    let file = bench.dir.path().join("policy.yaml");
    let token = bench.idp.token(Algorithm::RS256);
    assert_eq!(seen_header(&bench, &token).await, "x-a");

    write_atomically(&file, &policy(&bench.idp, "X-B"));
    eventually(&bench, &token, "x-b").await;
    let successes = bench.metric("tokengate_policy_reloads_total", &[("result", "success")]);
    assert!(successes >= 2.0, "start and one reload: {successes}");

    let errors = bench.metric("tokengate_policy_reloads_total", &[("result", "error")]);
    write_atomically(
        &file,
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {name: bench}\nspec: {selector: {}}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while bench.metric("tokengate_policy_reloads_total", &[("result", "error")]) == errors {
        assert!(Instant::now() < deadline, "invalid file not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen_header(&bench, &token).await,
        "x-b",
        "last good policy stays"
    );

    // A fixed file applies again.
    write_atomically(&file, &policy(&bench.idp, "X-A"));
    eventually(&bench, &token, "x-a").await;
}

#[tokio::test]
async fn pod_labels_choose_the_policy_live() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = tokengate_testkit::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, policy(&idp, "X-A")).expect("policy");
    let labels = dir.path().join("labels");
    std::fs::write(&labels, "app=\"bench\"\n").expect("labels");
    let mut config = crate::support::config(vec![file], &echo);
    config.pod_labels = Some(labels.clone());
    let sidecar = tokengate_sidecar::start(config).await.expect("starts");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let status = |path: String| {
        let client = client.clone();
        let token = idp.token(Algorithm::RS256);
        async move {
            let request = http::Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::default())
                .expect("request");
            client.request(request).await.expect("response").status()
        }
    };
    let url = format!("http://{}/", sidecar.proxy_addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(url.clone()).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "keys never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_atomically(&labels, "app=\"other\"\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(url.clone()).await != StatusCode::FORBIDDEN {
        assert!(Instant::now() < deadline, "label change not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar.shutdown().await;
}

/// kubelet's layout: `..<timestamp>/policy.yaml`, `..data -> ..<timestamp>`,
/// `policy.yaml -> ..data/policy.yaml`; an update renames a new `..data` link over the old.
#[tokio::test]
async fn kubelet_symlink_swaps_under_load_lose_nothing() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = tokengate_testkit::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();
    let publish = |n: u64, text: &str| {
        let data = root.join(format!("..2026_{n:04}"));
        std::fs::create_dir(&data).expect("data dir");
        std::fs::write(data.join("policy.yaml"), text).expect("write");
        let link = root.join("..data_tmp");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("..2026_{n:04}"), &link).expect("symlink");
        std::fs::rename(&link, root.join("..data")).expect("swap");
    };
    publish(0, &policy(&idp, "X-A"));
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).expect("link");
    let mut config = crate::support::config(vec![root.join("policy.yaml")], &echo);
    config.reload_interval = Duration::from_millis(10);
    let sidecar = tokengate_sidecar::start(config).await.expect("starts");
    let proxy = sidecar.proxy_addr;
    let token = idp.token(Algorithm::RS256);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sidecar.ready() {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, seen_a, seen_b) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, token, stop) = (client.clone(), token.clone(), Arc::clone(&stop));
        let (sent, seen_a, seen_b) = (Arc::clone(&sent), Arc::clone(&seen_a), Arc::clone(&seen_b));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = http::Request::get(format!("http://{proxy}/"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::default())
                    .expect("request");
                let response = client
                    .request(request)
                    .await
                    .expect("no request fails or resets");
                assert_eq!(response.status(), StatusCode::OK);
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                let record: tokengate_testkit::echo::EchoRecord =
                    serde_json::from_slice(&body).expect("echo record");
                match (
                    record.header("x-a").is_some(),
                    record.header("x-b").is_some(),
                ) {
                    (true, false) => seen_a.fetch_add(1, Ordering::Relaxed),
                    (false, true) => seen_b.fetch_add(1, Ordering::Relaxed),
                    other => panic!("request judged by a mix of policies: {other:?}"),
                };
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for n in 1..=100u64 {
        let text = if n == 50 {
            "not: [a, policy".to_owned()
        } else {
            policy(&idp, if n % 2 == 0 { "X-A" } else { "X-B" })
        };
        publish(n, &text);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task ran without failures");
    }
    let (a, b) = (
        seen_a.load(Ordering::Relaxed),
        seen_b.load(Ordering::Relaxed),
    );
    println!(
        "{} requests during 100 swaps: {a} judged by A, {b} by B",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        a > 0 && b > 0,
        "both policies applied during the swaps: {a} / {b}"
    );
    let errors = crate::support::metric_value(
        &sidecar.metrics.render(),
        "tokengate_policy_reloads_total",
        &[("result", "error")],
    );
    assert!(errors >= 1.0, "the invalid version was counted");
    sidecar.shutdown().await;
}

/// `issuerSigningKeys[].file` is watched with the policy: a rotated key file applies live,
/// through a plain rewrite as through kubelet's symlink swap.
#[tokio::test]
async fn a_changed_key_file_reloads_the_policy() {
    use base64::Engine as _;
    let secret = |byte: u8| [byte; 32];
    let token = |secret: [u8; 32]| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "s", "iat": now, "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_secret(&secret).expect("key"),
        )
        .expect("token")
    };
    let encode = |secret: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(secret);
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = tokengate_testkit::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    // The key file is itself a kubelet-projected Secret beside the policy.
    let mut keys = crate::support::Projected::new(dir.path().join("keys"));
    keys.publish(&[("hmac", &encode(secret(1)))]);
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        manifest(
            "bench",
            "  validateJwt:\n    issuerSigningKeys: [{file: keys/hmac}]\n    algorithms: [HS256]\n",
        ),
    )
    .expect("policy");
    let mut config = crate::support::config(vec![file], &echo);
    config.reload_interval = Duration::from_millis(20);
    let bench = Bench::with_config(idp, echo, dir, config).await;
    let status = async |token: &str| bench.get_with_token("/", token).await.status;
    assert_eq!(status(&token(secret(1))).await, StatusCode::OK);

    keys.publish(&[("hmac", &encode(secret(2)))]);
    crate::support::wait_until("swapped key file applied", async || {
        status(&token(secret(2))).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(&token(secret(1))).await, StatusCode::UNAUTHORIZED);

    // A plain rewrite of the file the link points at.
    let target = bench.dir.path().join("keys/hmac");
    std::fs::write(&target, encode(secret(3))).expect("rewrite");
    crate::support::wait_until("rewritten key file applied", async || {
        status(&token(secret(3))).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(&token(secret(2))).await, StatusCode::UNAUTHORIZED);
}
