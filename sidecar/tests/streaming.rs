//! Bodies stream, upgrades pass, HTTP/2 goes through: the proxy is transparent once a token is
//! accepted.

mod support;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use support::Bench;
use tokengate_tests::echo::{CHUNK_SIZE, EchoRecord, EchoServer, pattern, pattern_sha256};
use tokengate_tests::idp::{DEFAULT_AUDIENCE, IdentityProvider};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn discovery(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.discovery_url()
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Kills the sidecar process however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const BIG: u64 = 256 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 50 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_both_directions_in_bounded_memory() {
    let idp = IdentityProvider::start().await.expect("provider");
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, support::manifest("big", &discovery(&idp))).expect("policy");
    let (listen, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_tokengate-sidecar"))
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &echo.url()])
        .env("TOKENGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("sidecar binary starts");
    let guard = ChildGuard(child);
    let pid = guard.0.id();

    let client: Client<_, BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = Request::get(format!("http://127.0.0.1:{admin}/ready"))
            .body(Full::default().boxed())
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
    let idle_kib = status_kib(pid, "VmRSS:");

    // Upload: generated on the fly, never held whole.
    let chunks = BIG / CHUNK_SIZE as u64;
    let body = StreamBody::new(futures_util::stream::iter((0..chunks).map(|i| {
        Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(
            i * CHUNK_SIZE as u64,
            CHUNK_SIZE,
        ))))
    })));
    let started = Instant::now();
    let upload = Request::post(format!("http://127.0.0.1:{listen}/upload"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::BodyExt::boxed(body))
        .expect("request");
    let response = client.request(upload).await.expect("upload answered");
    assert_eq!(response.status(), StatusCode::OK);
    let record: EchoRecord = serde_json::from_slice(
        &response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes(),
    )
    .expect("echo record");
    assert_eq!(record.body_len, BIG);
    assert_eq!(record.body_sha256, pattern_sha256(BIG));
    let upload_time = started.elapsed();

    // Download: hashed chunk by chunk as it arrives.
    let started = Instant::now();
    let download = Request::get(format!("http://127.0.0.1:{listen}/bytes/{BIG}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default().boxed())
        .expect("request");
    let response = client.request(download).await.expect("download answered");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            received += data.len() as u64;
            digest.update(&data);
        }
    }
    let hash: String = digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(received, BIG);
    assert_eq!(hash, pattern_sha256(BIG));
    let download_time = started.elapsed();

    let peak_kib = status_kib(pid, "VmHWM:");
    println!(
        "sidecar RSS: idle {idle_kib} KiB, peak {peak_kib} KiB; 256 MiB up in {upload_time:?}, down in {download_time:?}"
    );
    assert!(peak_kib > 0, "could not read the sidecar's memory");
    assert!(peak_kib < RSS_LIMIT_KIB, "sidecar peaked at {peak_kib} KiB");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let mut request = format!("ws://{}/ws", bench.sidecar.proxy_addr)
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect");
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake through the sidecar");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.send(Message::text("hello")).await.expect("send");
    let echoed = socket.next().await.expect("message").expect("frame");
    assert_eq!(echoed, Message::text("hello"));
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    let echoed = socket.next().await.expect("message").expect("frame");
    assert_eq!(echoed, Message::binary(vec![0u8, 1, 2, 255]));
    let _ = socket.close(None).await;

    // Without a token the upgrade is refused before it reaches the application.
    let request = format!("ws://{}/ws", bench.sidecar.proxy_addr)
        .into_client_request()
        .expect("ws request");
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect");
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test]
async fn http2_end_to_end_with_grpc_headers() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut calls = Vec::new();
    for i in 0..8 {
        let request = Request::post(bench.url(&format!("/pkg.Service/Method{i}")))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
            .expect("request");
        calls.push(client.request(request));
    }
    for (i, call) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let response = call.expect("h2 response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let record: EchoRecord = serde_json::from_slice(
            &response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes(),
        )
        .expect("record");
        assert_eq!(record.version, "HTTP/2.0", "upstream spoken as HTTP/2");
        assert_eq!(record.path, format!("/pkg.Service/Method{i}"));
        assert_eq!(record.header("te"), Some("trailers"));
        assert_eq!(record.header("content-type"), Some("application/grpc"));
        assert_eq!(record.body_len, 7);
    }
    // And a refused HTTP/2 request gets its 401 over HTTP/2.
    let refused = client
        .request(
            Request::get(bench.url("/"))
                .body(Full::default())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let reply = bench.get_with_token("/", &token).await;
        assert_eq!(reply.status, StatusCode::OK);
        // The echo sees the sidecar's pooled upstream connection.
        peers.insert(reply.echoed().peer);
    }
    assert_eq!(
        peers.len(),
        1,
        "upstream connections were not reused: {peers:?}"
    );
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    // Nothing listens upstream: 502.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.base = format!("http://{closed}").parse().expect("uri");
    })
    .await;
    let reply = bench
        .get_with_token("/", &bench.idp.token(Algorithm::RS256))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["statusCode"], 502);

    // The application answers too late: 504.
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    let reply = bench
        .send(
            Request::get(bench.url("/slow"))
                .header(
                    "authorization",
                    format!("Bearer {}", bench.idp.token(Algorithm::RS256)),
                )
                .header(tokengate_tests::echo::DELAY_HEADER, "2000")
                .body(Full::default())
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
}
