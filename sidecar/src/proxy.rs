//! The request path: judge, then stream the request to the application and its response
//! back, unchanged but for the headers the policy owns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate_policy::claims::claim_header_value;
use tokio::sync::oneshot;

use crate::extract::strip_token;
use crate::gate::{ActivePolicy, Decision, Gate, Permit};
use crate::metrics::Metrics;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Which HTTP version the application speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamProtocol {
    /// HTTP/2 requests go upstream as HTTP/2 (prior knowledge), others as HTTP/1.1.
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// `http://127.0.0.1:8080`: scheme and authority of the application.
    pub base: Uri,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// Time allowed for the application's response headers (bodies stream without limit).
    pub response_timeout: Duration,
}

pub struct Proxy {
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    upstream: UpstreamSettings,
    http1: Client<HttpConnector, UpstreamBody>,
    http2: Client<HttpConnector, UpstreamBody>,
}

impl Proxy {
    pub fn new(gate: Arc<Gate>, metrics: Arc<Metrics>, upstream: UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self {
            gate,
            metrics,
            upstream,
            http1,
            http2,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let decision = self.gate.decide(&parts).await;
        let elapsed = started.elapsed().as_secs_f64();
        match decision {
            Decision::Deny(refusal) => {
                let (policy_name, rejection) = (refusal.policy_name(), &refusal.rejection);
                self.metrics
                    .requests
                    .with_label_values(&[policy_name, "deny", rejection.reason.as_str()])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[policy_name, "deny"])
                    .observe(elapsed);
                tracing::info!(
                    policy = policy_name,
                    reason = rejection.reason.as_str(),
                    detail = %rejection.detail,
                    method = %parts.method,
                    path = parts.uri.path(),
                    "request refused"
                );
                Ok(refusal.response().map(full))
            }
            Decision::Allow(permit) => {
                let policy_name = permit.policy_name();
                self.metrics
                    .requests
                    .with_label_values(&[policy_name, "allow", permit.basis.as_str()])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[policy_name, "allow"])
                    .observe(elapsed);
                if let Some((_, verified)) = &permit.token {
                    tracing::debug!(
                        policy = policy_name,
                        iss = verified.issuer.as_deref(),
                        kid = verified.kid.as_deref(),
                        alg = %verified.algorithm,
                        "request permitted"
                    );
                }
                prepare_upstream_request(&mut parts, &permit.policy, &permit, peer);
                Ok(self.forward(parts, body).await)
            }
        }
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
    ) -> Response<ProxyBody> {
        let upgrade = is_upgrade(&parts.headers).then(|| parts.extensions.remove::<OnUpgrade>());
        let use_http2 = match self.upstream.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Auto => parts.version == Version::HTTP_2,
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let mut uri = self.upstream.base.clone().into_parts();
        uri.path_and_query = path_and_query.parse().ok();
        match Uri::from_parts(uri) {
            Ok(uri) => parts.uri = uri,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "Bad Request"),
        }
        if use_http2 {
            parts.version = Version::HTTP_2;
            // HTTP/2 carries the authority in the URI; a Host header would be a protocol error.
            parts.headers.remove(header::HOST);
        } else {
            parts.version = Version::HTTP_11;
        }
        let (body, body_sent) = UpstreamBody::new(body);
        let request = Request::from_parts(parts, body);
        let client = if use_http2 { &self.http2 } else { &self.http1 };
        let sent = Instant::now();
        let mut response = client.request(request);
        // The response timeout runs from the end of the request body: an upload takes as long
        // as the client needs, an application that answers early is not kept waiting.
        let result = async {
            tokio::select! {
                response = &mut response => return Ok(response),
                _ = body_sent => {}
            }
            tokio::time::timeout(self.upstream.response_timeout, response).await
        }
        .await;
        self.metrics
            .upstream_duration
            .observe(sent.elapsed().as_secs_f64());
        let mut response = match result {
            Err(_) => {
                tracing::warn!(timeout = ?self.upstream.response_timeout, "upstream did not answer in time");
                return plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout");
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "upstream request failed");
                return plain(StatusCode::BAD_GATEWAY, "Bad Gateway");
            }
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(Some(downstream)) = upgrade {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    match tokio::try_join!(downstream, upstream) {
                        Ok((down, up)) => {
                            let mut down = TokioIo::new(down);
                            let mut up = TokioIo::new(up);
                            if let Err(err) =
                                tokio::io::copy_bidirectional(&mut down, &mut up).await
                            {
                                tracing::debug!(error = %err, "upgraded connection closed");
                            }
                        }
                        Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                    }
                });
            }
            return response.map(|b| b.boxed());
        }
        remove_hop_by_hop(response.headers_mut(), false);
        response.map(|b| b.boxed())
    }
}

/// The request body on its way upstream. Says when it has been sent (or abandoned), which is
/// when the wait for the application's response begins.
struct UpstreamBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
}

impl UpstreamBody {
    fn new(inner: Incoming) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        // An empty body may never be polled; dropping the sender signals at once.
        let sent = (!inner.is_end_stream()).then_some(tx);
        (Self { inner, sent }, rx)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if finished {
            // Dropping the sender is the signal (a dropped body signals the same way).
            this.sent = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Headers of the upstream request: hop-by-hop headers go, forged claim headers go, claims
/// and the client address come in, and the token is removed when the policy says so.
fn prepare_upstream_request(
    parts: &mut http::request::Parts,
    active: &ActivePolicy,
    permit: &Permit,
    peer: SocketAddr,
) {
    let policy = &active.policy;
    let upgrade = is_upgrade(&parts.headers);
    remove_hop_by_hop(&mut parts.headers, upgrade);
    // Always, even on routes without authentication: only the sidecar writes these.
    for mapping in &policy.claims_to_headers {
        parts.headers.remove(mapping.header.as_str());
    }
    if let Some((extracted, verified)) = &permit.token {
        for mapping in &policy.claims_to_headers {
            let Some(value) = mapping
                .claim
                .resolve(&verified.claims)
                .and_then(claim_header_value)
            else {
                continue;
            };
            match (
                HeaderName::from_bytes(mapping.header.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(name), Ok(value)) => {
                    parts.headers.insert(name, value);
                }
                _ => tracing::debug!(
                    header = %mapping.header,
                    "claim value cannot be a header value; header left out"
                ),
            }
        }
        if !policy.forward_token {
            strip_token(
                &policy.extraction,
                extracted.location,
                &mut parts.headers,
                &mut parts.uri,
            );
        }
    }
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) => format!("{existing}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// RFC 9110 7.6.1: connection-specific headers do not cross a proxy.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn plain(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"statusCode": status.as_u16(), "message": message}).to_string();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_grpc_te_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-private").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(
            headers.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(headers.get("x-app").is_some());
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert!(headers.get(header::UPGRADE).is_some());
        assert!(headers.get(header::CONNECTION).is_some());
    }
}
