//! An upstream echo server standing in for the protected application: HTTP/1.1 and HTTP/2
//! cleartext (prior knowledge) on one port, WebSocket upgrades, streaming in both directions.
//!
//! - Any request: 200 with a JSON [`EchoRecord`] of what arrived. The request body is hashed
//!   frame by frame, never buffered whole.
//! - `GET /bytes/{n}`: `n` bytes of [`pattern`], streamed in 64 KiB chunks, `Content-Length: n`.
//! - `GET /ws` with a WebSocket upgrade: echoes text and binary messages.
//! - Request header `x-echo-status: <code>` sets the response status; `x-echo-delay-ms: <ms>`
//!   delays the response (after the body has been read).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::digest;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Bodies up to this size that are valid UTF-8 are echoed back in [`EchoRecord::body`].
pub const MAX_ECHOED_BODY: usize = 64 * 1024;
/// Chunk size of `/bytes/{n}` responses.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Request header that sets the response status.
pub const STATUS_HEADER: &str = "x-echo-status";
/// Request header that delays the response by this many milliseconds.
pub const DELAY_HEADER: &str = "x-echo-delay-ms";

/// What the echo server saw of one request; the JSON body of every echo response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoRecord {
    pub method: String,
    /// The request-target as received (origin form for HTTP/1.1, absolute for HTTP/2).
    pub uri: String,
    pub path: String,
    pub query: Option<String>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Lower-case header name to its values, in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Trailers, if the request had any.
    #[serde(default)]
    pub trailers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
    /// Lower-case hex SHA-256 of the body.
    pub body_sha256: String,
    /// The body, when it is valid UTF-8 and at most [`MAX_ECHOED_BODY`] bytes.
    pub body: Option<String>,
    /// The peer address of the connection.
    pub peer: String,
}

impl EchoRecord {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().map(String::as_str)
    }

    /// Every value of header `name` (any case).
    pub fn header_values(&self, name: &str) -> &[String] {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Length of the pattern's ramp: a prime, so misplaced or dropped chunks show.
const PATTERN_PERIOD: usize = 251;

/// One period of the pattern, built at compile time.
const PATTERN_RAMP: [u8; PATTERN_PERIOD] = {
    let mut ramp = [0u8; PATTERN_PERIOD];
    let mut i = 0;
    while i < PATTERN_PERIOD {
        ramp[i] = i as u8;
        i += 1;
    }
    ramp
};

/// Byte `i` of every `/bytes/{n}` body: a period-251 ramp, so misplaced or dropped chunks show.
pub fn pattern_byte(i: u64) -> u8 {
    PATTERN_RAMP[(i % PATTERN_PERIOD as u64) as usize]
}

/// `len` bytes of the pattern starting at `offset`, copied a period at a time: the big-body
/// tests ask for hundreds of MiB, and a byte at a time costs seconds in an unoptimised build.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut start = (offset % PATTERN_PERIOD as u64) as usize;
    while out.len() < len {
        let take = (PATTERN_PERIOD - start).min(len - out.len());
        out.extend_from_slice(&PATTERN_RAMP[start..start + take]);
        start = 0;
    }
    out
}

/// Lower-case hex SHA-256 of the first `n` bytes of the pattern, computed in chunks.
pub fn pattern_sha256(n: u64) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut offset = 0;
    while offset < n {
        let len = (n - offset).min(CHUNK_SIZE as u64) as usize;
        ctx.update(&pattern(offset, len));
        offset += len as u64;
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running echo server. Clones share it; it stops (connections and WebSockets included) when
/// the last clone is dropped.
#[derive(Clone)]
pub struct EchoServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _guard: Arc<Guard>,
}

struct Shared {
    requests: AtomicU64,
    last: Mutex<Option<EchoRecord>>,
}

struct Guard {
    task: JoinHandle<()>,
    // Dropping the sender tells WebSocket connections, which outlive their connection task, to end.
    _shutdown: watch::Sender<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Starts an echo server on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> anyhow::Result<EchoServer> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an echo server listening on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<EchoServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding echo server to {addr}"))?;
        let addr = listener
            .local_addr()
            .context("reading echo server address")?;
        let shared = Arc::new(Shared {
            requests: AtomicU64::new(0),
            last: Mutex::new(None),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
        Ok(EchoServer {
            shared,
            addr,
            _guard: Arc::new(Guard {
                task,
                _shutdown: shutdown_tx,
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far, counted on arrival (before the body is read).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The record of the most recent request whose body was read completely.
    pub fn last_request(&self) -> Option<EchoRecord> {
        self.shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Zeroes the request counter and forgets the last request.
    pub fn reset(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        *self
            .shared
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl std::fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoServer")
            .field("addr", &self.addr)
            .finish()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<()>) {
    // Connections live in this set so aborting the loop closes them too.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually fd exhaustion; back off instead of spinning.
                tracing::warn!(error = %e, "echo server accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req, peer, shutdown).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "echo connection ended with error");
            }
        });
    }
}

type EchoBody = BoxBody<Bytes, Infallible>;

async fn handle(
    shared: &Shared,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shutdown: watch::Receiver<()>,
) -> Response<EchoBody> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(status) = requested_status(req.headers()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "x-echo-status must be a final status code",
        );
    };
    let status = status.unwrap_or(StatusCode::OK);
    let delay = requested_delay(req.headers());

    let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
    if is_get && let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected /bytes/{n} with n a byte count",
            );
        };
        record(shared, &req, peer, Summary::empty());
        sleep(delay).await;
        return pattern_response(status, n);
    }
    if req.uri().path() == "/ws" && is_websocket_upgrade(&req) {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        if req
            .headers()
            .get("sec-websocket-version")
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut resp = error(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket version 13 required",
            );
            resp.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
            return resp;
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        record(shared, &req, peer, Summary::empty());
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => websocket_echo(TokioIo::new(upgraded), shutdown).await,
                Err(e) => tracing::debug!(error = %e, "echo WebSocket upgrade failed"),
            }
        });
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert("sec-websocket-accept", accept);
        }
        return resp;
    }

    let (parts, body) = req.into_parts();
    let summary = match Summary::read(body).await {
        Ok(summary) => summary,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("reading request body: {e}"),
            );
        }
    };
    let record = record(shared, &Request::from_parts(parts, ()), peer, summary);
    sleep(delay).await;
    let body = serde_json::to_vec(&record).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The status `x-echo-status` asks for: `Ok(None)` without the header, `Err` if it is not a
/// final status code.
fn requested_status(headers: &HeaderMap) -> Result<Option<StatusCode>, ()> {
    let Some(value) = headers.get(STATUS_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        // 1xx cannot be a final response.
        .filter(|status| !status.is_informational())
        .map(Some)
        .ok_or(())
}

fn requested_delay(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

async fn sleep(delay: Option<Duration>) {
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    req.method() == Method::GET
        && req.version() <= Version::HTTP_11
        && has_token(UPGRADE, "websocket")
        && has_token(CONNECTION, "upgrade")
}

async fn websocket_echo(io: TokioIo<hyper::upgrade::Upgraded>, mut shutdown: watch::Receiver<()>) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    loop {
        tokio::select! {
            // Fires when the server is dropped (the sender goes away).
            _ = shutdown.changed() => break,
            message = ws.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                // Ping, pong and close replies are queued by tungstenite and flushed by the next
                // read, which ends the stream once the close handshake is done.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
}

/// Length, hash and (small, UTF-8) content of a body read frame by frame.
struct Summary {
    len: u64,
    sha256: String,
    text: Option<String>,
    trailers: BTreeMap<String, Vec<String>>,
}

impl Summary {
    fn empty() -> Summary {
        Summary {
            len: 0,
            sha256: hex(digest::digest(&digest::SHA256, b"").as_ref()),
            text: Some(String::new()),
            trailers: BTreeMap::new(),
        }
    }

    async fn read(mut body: Incoming) -> Result<Summary, hyper::Error> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut len = 0u64;
        // Kept only while the body is small enough to echo back; large bodies are never held.
        let mut head: Option<Vec<u8>> = Some(Vec::new());
        let mut trailers = BTreeMap::new();
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(data) => {
                    ctx.update(&data);
                    len += data.len() as u64;
                    head = head
                        .filter(|_| len <= MAX_ECHOED_BODY as u64)
                        .map(|mut head| {
                            head.extend_from_slice(&data);
                            head
                        });
                }
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = header_map(&map);
                    }
                }
            }
        }
        Ok(Summary {
            len,
            sha256: hex(ctx.finish().as_ref()),
            text: head.and_then(|head| String::from_utf8(head).ok()),
            trailers,
        })
    }
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    map
}

fn record<B>(shared: &Shared, req: &Request<B>, peer: SocketAddr, body: Summary) -> EchoRecord {
    let record = EchoRecord {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        version: format!("{:?}", req.version()),
        headers: header_map(req.headers()),
        trailers: body.trailers,
        body_len: body.len,
        body_sha256: body.sha256,
        body: body.text,
        peer: peer.to_string(),
    };
    *shared.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(record.clone());
    record
}

fn empty() -> EchoBody {
    Full::new(Bytes::new()).boxed()
}

fn error(status: StatusCode, message: &str) -> Response<EchoBody> {
    let body = json!({ "error": message }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn pattern_response(status: StatusCode, n: u64) -> Response<EchoBody> {
    let mut resp = Response::new(
        PatternBody {
            offset: 0,
            remaining: n,
        }
        .boxed(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

/// The `/bytes/{n}` body, generated one chunk at a time as the connection asks for data.
struct PatternBody {
    offset: u64,
    remaining: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(CHUNK_SIZE as u64) as usize;
        let chunk = pattern(self.offset, len);
        self.offset += len as u64;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
