//! Bodies stream, upgrades pass, HTTP/2 and gRPC go through, connections are kept alive: once a
//! token is accepted the proxy is transparent. When the application is down or slow, the
//! client gets a 502 or a 504 with a JSON body.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::Bench;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use tokengate_testkit::echo::{CHUNK_SIZE, EchoRecord, EchoServer, pattern, pattern_sha256};
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate-sidecar");

/// 256 MiB, each way.
const BIG: u64 = 256 * 1024 * 1024;
/// The sidecar's resident memory must stay below this while the big bodies pass.
const RSS_LIMIT_KIB: u64 = 50 * 1024;

type TestBody = BoxBody<Bytes, Infallible>;

/// Keys from the provider's discovery document, the test audience.
fn discovery(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.discovery_url()
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn echo_record(response: Response<Incoming>) -> EchoRecord {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    serde_json::from_slice(&body).unwrap_or_else(|err| {
        panic!(
            "expected an echo record, got HTTP {status} {:?}: {err}",
            String::from_utf8_lossy(&body)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The sidecar binary as a child process, so that its memory is its own.

/// The sidecar process; killed however the test ends.
struct SidecarProcess {
    child: Child,
    proxy: SocketAddr,
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct ports that were free a moment ago. Another process may take one before the
/// sidecar binds it; [`SidecarProcess::start`] then tries again with new ports.
fn two_free_ports() -> (SocketAddr, SocketAddr) {
    let a = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let b = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    (
        a.local_addr().expect("local address"),
        b.local_addr().expect("local address"),
    )
}

impl SidecarProcess {
    /// Runs `tokengate-sidecar run` and waits until its `/ready` answers 200.
    async fn start(policy: &Path, upstream: &str, log_dir: &Path) -> SidecarProcess {
        let probe: Client<HttpConnector, TestBody> =
            Client::builder(TokioExecutor::new()).build_http();
        for attempt in 1..=5 {
            let (proxy, admin) = two_free_ports();
            let log_path = log_dir.join(format!("sidecar-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("sidecar log file");
            let child = Command::new(BIN)
                .arg("run")
                .arg("--policy")
                .arg(policy)
                .args(["--listen", &proxy.to_string()])
                .args(["--admin", &admin.to_string()])
                .args(["--upstream", upstream])
                .env("TOKENGATE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("sidecar binary starts");
            let mut process = SidecarProcess { child, proxy };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = process.child.try_wait().expect("child status") {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    // A port taken since it was picked: pick again.
                    if log.contains("binding") {
                        break;
                    }
                    panic!("sidecar exited with {status} before it was ready:\n{log}");
                }
                let ready = Request::get(format!("http://{admin}/ready"))
                    .body(empty())
                    .expect("request");
                if let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(2), probe.request(ready)).await
                    && response.status() == StatusCode::OK
                {
                    return process;
                }
                assert!(
                    Instant::now() < deadline,
                    "sidecar not ready after 20s:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("sidecar could not bind free ports in 5 attempts");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }
}

/// A `VmRSS:`/`VmHWM:`-style field of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Samples a process's resident set every 50 ms on its own thread, independent of the runtime
/// that is busy moving the bodies.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, usize)>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0usize);
            while !flag.load(Ordering::Relaxed) {
                // Gone: the process ended.
                let Some(rss) = proc_status_kib(pid, "VmRSS:") else {
                    break;
                };
                peak = peak.max(rss);
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Highest sampled RSS in KiB, and the number of samples.
    fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|thread| thread.join().expect("sampler thread"))
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Streams `BIG` bytes of the pattern up, generated chunk by chunk as the connection asks.
async fn upload(client: Client<HttpConnector, TestBody>, url: String, token: String) -> Duration {
    let chunks = BIG.div_ceil(CHUNK_SIZE as u64);
    let frames = futures_util::stream::iter(0..chunks).map(|i| {
        let offset = i * CHUNK_SIZE as u64;
        let len = (BIG - offset).min(CHUNK_SIZE as u64) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(offset, len))))
    });
    let started = Instant::now();
    let request = Request::post(url)
        .header("authorization", bearer(&token))
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("request");
    let response = client.request(request).await.expect("upload answered");
    assert_eq!(response.status(), StatusCode::OK, "upload status");
    let record = echo_record(response).await;
    let elapsed = started.elapsed();
    assert_eq!(record.body_len, BIG, "bytes the application received");
    assert_eq!(record.body_sha256, pattern_sha256(BIG), "uploaded content");
    elapsed
}

/// Pulls `BIG` bytes down, hashing each frame as it arrives and keeping none.
async fn download(client: Client<HttpConnector, TestBody>, url: String, token: String) -> Duration {
    let started = Instant::now();
    let request = Request::get(url)
        .header("authorization", bearer(&token))
        .body(empty())
        .expect("request");
    let response = client.request(request).await.expect("download answered");
    assert_eq!(response.status(), StatusCode::OK, "download status");
    let mut body = response.into_body();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("response frame").into_data() {
            received += data.len() as u64;
            digest.update(&data);
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(received, BIG, "bytes downloaded");
    assert_eq!(
        hex(digest.finish().as_ref()),
        pattern_sha256(BIG),
        "downloaded content"
    );
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    let idp = IdentityProvider::start().await.expect("identity provider");
    let echo = EchoServer::start().await.expect("echo server");
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, crate::support::manifest("big", &discovery(&idp)))
        .expect("policy written");
    let sidecar = SidecarProcess::start(&policy, &echo.url(), dir.path()).await;
    let pid = sidecar.pid();
    let token = idp.token(Algorithm::ES256);
    let idle_kib = proc_status_kib(pid, "VmRSS:").expect("sidecar's VmRSS");

    let sampler = RssSampler::start(pid);
    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build_http();
    // Both directions at once, each on its own connection and worker.
    let up = tokio::spawn(upload(
        client.clone(),
        sidecar.url("/upload"),
        token.clone(),
    ));
    let down = tokio::spawn(download(
        client,
        sidecar.url(&format!("/bytes/{BIG}")),
        token,
    ));
    let both = tokio::time::timeout(Duration::from_secs(55), async {
        (
            up.await.expect("upload task"),
            down.await.expect("download task"),
        )
    });
    let (upload_time, download_time) = both.await.expect("transfers finish within 55s");
    let high_water_kib = proc_status_kib(pid, "VmHWM:").expect("sidecar's VmHWM");
    let (sampled_kib, samples) = sampler.finish();
    drop(sidecar);

    let peak_kib = sampled_kib.max(high_water_kib);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "sidecar RSS: idle {:.1} MiB, peak {:.1} MiB (sampled max {:.1} MiB over {samples} samples, VmHWM {:.1} MiB); \
         256 MiB up in {upload_time:.2?}, 256 MiB down in {download_time:.2?}, concurrently",
        mib(idle_kib),
        mib(peak_kib),
        mib(sampled_kib),
        mib(high_water_kib),
    );
    assert!(samples >= 5, "only {samples} RSS samples were taken");
    assert!(
        peak_kib < RSS_LIMIT_KIB,
        "sidecar RSS peaked at {:.1} MiB, limit {} MiB",
        mib(peak_kib),
        RSS_LIMIT_KIB / 1024
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_upgrade_passes_with_a_token_and_is_refused_without() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let url = format!("ws://{}/ws", bench.sidecar.proxy_addr);

    let mut request = url.as_str().into_client_request().expect("ws request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&bearer(&token)).expect("header value"),
    );
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect to the sidecar");
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake through the sidecar");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let binary: Vec<u8> = pattern(0, 200_000);
    let messages = [
        Message::text("hello through the sidecar"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("second text"),
        Message::binary(binary),
    ];
    for message in messages {
        socket.send(message.clone()).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("echo within 10s")
            .expect("connection open")
            .expect("message");
        assert_eq!(echoed, message);
    }
    socket.close(None).await.expect("close handshake");

    // Without a token the handshake fails with the sidecar's 401, before the application.
    let before = bench.echo.requests();
    let request = url.as_str().into_client_request().expect("ws request");
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect to the sidecar");
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(
                response.headers().contains_key("www-authenticate"),
                "401 carries a challenge"
            );
        }
        Err(other) => panic!("expected an HTTP 401, got error {other}"),
        Ok((_, response)) => panic!("upgrade without a token succeeded: {response:?}"),
    }
    assert_eq!(
        bench.echo.requests(),
        before,
        "the application saw the refused upgrade"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 and gRPC

#[tokio::test]
async fn http2_prior_knowledge_goes_upstream_as_http2_and_multiplexes() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);

    // A pooled client that only speaks HTTP/2 (h2c with prior knowledge).
    let client: Client<HttpConnector, TestBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::get(bench.url("/h2?x=1"))
        .header("authorization", bearer(&token))
        .body(empty())
        .expect("request");
    let response = client.request(request).await.expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let record = echo_record(response).await;
    assert_eq!(record.version, "HTTP/2.0", "upstream spoken as HTTP/2");
    assert_eq!(record.path, "/h2");
    assert_eq!(record.query.as_deref(), Some("x=1"));

    // Several requests in flight at once on one connection.
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect to the sidecar");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let calls = (0..8).map(|i| {
        let mut sender = sender.clone();
        let request = Request::post(bench.url(&format!("/stream/{i}")))
            .header("authorization", bearer(&token))
            .body(Full::new(Bytes::from(format!("request {i}"))).boxed())
            .expect("request");
        async move {
            let response = sender.send_request(request).await.expect("h2 response");
            assert_eq!(response.status(), StatusCode::OK, "stream {i}");
            (i, echo_record(response).await)
        }
    });
    for (i, record) in futures_util::future::join_all(calls).await {
        assert_eq!(record.version, "HTTP/2.0");
        assert_eq!(record.path, format!("/stream/{i}"));
        assert_eq!(
            record.body.as_deref(),
            Some(format!("request {i}").as_str())
        );
    }
    // A refusal on the same connection leaves it usable.
    let mut sender = sender;
    let refused = sender
        .send_request(
            Request::get(bench.url("/no-token"))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let again = sender
        .send_request(
            Request::get(bench.url("/after-refusal"))
                .header("authorization", bearer(&token))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(again.status(), StatusCode::OK);
    drop(sender);
    connection.abort();
}

/// A gRPC message frame: uncompressed flag, big-endian length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

fn grpc_request(url: String, token: &str, payload: &[u8]) -> Request<TestBody> {
    Request::post(url)
        .header("authorization", bearer(token))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .body(Full::new(grpc_frame(payload)).boxed())
        .expect("request")
}

#[tokio::test]
async fn grpc_shaped_requests_keep_te_trailers_and_response_trailers() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let client: Client<HttpConnector, TestBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();

    let response = client
        .request(grpc_request(
            bench.url("/pkg.Orders/Get"),
            &token,
            b"order-1",
        ))
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    let record = echo_record(response).await;
    assert_eq!(record.method, "POST");
    assert_eq!(record.version, "HTTP/2.0");
    assert_eq!(record.path, "/pkg.Orders/Get");
    assert_eq!(record.header("te"), Some("trailers"), "te: trailers kept");
    assert_eq!(record.header("content-type"), Some("application/grpc"));
    assert_eq!(record.header("grpc-timeout"), Some("5S"));
    assert_eq!(record.body_len, 5 + 7);

    // A gRPC-like application answers with a message and `grpc-status` in the trailers; both
    // reach the client.
    let app = TestUpstream::start(|request: Request<Incoming>| async move {
        let version = request.version();
        let te = request.headers().get("te").cloned();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let reply = format!(
            "{version:?} te={} received={}",
            te.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("none"),
            body.len()
        );
        let frames = futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(grpc_frame(reply.as_bytes()))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        response
    })
    .await;
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.base = app.url().parse().expect("upstream url");
    })
    .await;
    let token = bench.idp.token(Algorithm::RS256);
    let response = client
        .request(grpc_request(
            bench.url("/pkg.Orders/Get"),
            &token,
            b"order-2",
        ))
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("content-type"),
        Some(&HeaderValue::from_static("application/grpc"))
    );
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(
        trailers.get("grpc-status"),
        Some(&HeaderValue::from_static("0"))
    );
    assert_eq!(
        trailers.get("grpc-message"),
        Some(&HeaderValue::from_static("ok"))
    );
    assert_eq!(
        collected.to_bytes(),
        grpc_frame(b"HTTP/2.0 te=trailers received=12")
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 keep-alive

#[tokio::test]
async fn http1_keep_alive_serves_sequential_requests_on_one_connection() {
    let bench = Bench::start(discovery).await;
    let token = bench.idp.token(Algorithm::RS256);
    let stream = tokio::net::TcpStream::connect(bench.sidecar.proxy_addr)
        .await
        .expect("connect to the sidecar");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1 handshake");
    let connection = tokio::spawn(connection);
    let host = bench.sidecar.proxy_addr.to_string();
    let mut upstream_peers = std::collections::BTreeSet::new();
    for i in 0..10 {
        sender.ready().await.expect("connection still open");
        let mut request = Request::post(format!("/seq/{i}"))
            .header("host", &host)
            .body(Full::new(Bytes::from(format!("body {i}"))).boxed())
            .expect("request");
        // Every fourth request has no token: a refusal must not cost the connection.
        if i % 4 != 3 {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&bearer(&token)).expect("header value"),
            );
        }
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.version(), Version::HTTP_11);
        assert!(
            response
                .headers()
                .get("connection")
                .is_none_or(|v| v != "close"),
            "request {i}: the sidecar asked to close the connection"
        );
        if i % 4 == 3 {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "request {i}");
            response.into_body().collect().await.expect("body");
            continue;
        }
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let record = echo_record(response).await;
        assert_eq!(record.version, "HTTP/1.1");
        assert_eq!(record.path, format!("/seq/{i}"));
        assert_eq!(record.body.as_deref(), Some(format!("body {i}").as_str()));
        upstream_peers.insert(record.peer);
    }
    assert!(!connection.is_finished(), "client connection closed");
    // The sidecar pools its side too: one upstream connection served them all.
    assert_eq!(
        upstream_peers.len(),
        1,
        "upstream connections were not reused: {upstream_peers:?}"
    );
    drop(sender);
    connection.abort();
}

// ---------------------------------------------------------------------------------------------
// Upstream failures

/// A small HTTP/1.1 + h2c server standing in for the application; stops when dropped.
struct TestUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    async fn start<F, Fut>(handler: F) -> TestUpstream
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test upstream");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting the task closes them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let handler = handler.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestUpstream { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn unreachable_upstream_is_a_json_502() {
    // A port that was just released: nothing listens there.
    let closed = {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local address")
    };
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.base = format!("http://{closed}").parse().expect("upstream url");
    })
    .await;
    let reply = bench
        .get_with_token("/orders", &bench.idp.token(Algorithm::RS256))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let json = reply.json();
    assert_eq!(json["statusCode"], 502, "{json}");
    assert!(json["message"].is_string(), "{json}");

    // A refused token is still refused as such, not as a gateway error.
    let reply = bench.get("/orders", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn slow_upstream_is_a_json_504_after_the_response_timeout() {
    let slow = TestUpstream::start(|_request: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(Full::new(Bytes::from_static(b"too late")).boxed())
    })
    .await;
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.base = slow.url().parse().expect("upstream url");
        config.upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    let token = bench.idp.token(Algorithm::RS256);
    let started = Instant::now();
    let reply = bench.get_with_token("/slow", &token).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(reply.json()["statusCode"], 504, "{:?}", reply.body);
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );

    // The same timeout over HTTP/2.
    let client: Client<HttpConnector, TestBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client
        .request(
            Request::get(bench.url("/slow"))
                .header("authorization", bearer(&token))
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
}

/// A request body trickling in for 1.5 s, 1000 bytes every 150 ms.
fn trickled_body() -> TestBody {
    let frames = futures_util::stream::iter(0..10u64).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(i * 1000, 1000))))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

#[tokio::test]
async fn response_timeout_starts_once_the_request_body_is_sent() {
    let bench = Bench::start_with(discovery, |config| {
        config.upstream.response_timeout = Duration::from_millis(500);
    })
    .await;
    let token = bench.idp.token(Algorithm::RS256);
    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build_http();

    // An upload slower than the timeout, to an application that answers at once: 200.
    let response = client
        .request(
            Request::post(bench.url("/upload"))
                .header("authorization", bearer(&token))
                .body(trickled_body())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let record = echo_record(response).await;
    assert_eq!(record.body_len, 10_000);
    assert_eq!(record.body_sha256, pattern_sha256(10_000));

    // The same upload to an application that then takes 2 s: 504.
    let started = Instant::now();
    let response = client
        .request(
            Request::post(bench.url("/upload"))
                .header("authorization", bearer(&token))
                .header(tokengate_testkit::echo::DELAY_HEADER, "2000")
                .body(trickled_body())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}
