//! The request path: judge, then stream the request to the application and its response
//! back, unchanged but for the headers the policy owns.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
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

use crate::active::ActivePolicy;
use crate::boundary::{self, is_upgrade, remove_hop_by_hop, upgrade_answered};
use crate::extract::strip_token_sources;
use crate::gate::{Decision, Gate, Permit, PermitBasis};
use crate::metrics::Metrics;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

// Header names the proxy touches on every request, parsed once: a `&str` name is parsed and
// classified again on each use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        // The request is put in the form the application will receive before it is judged.
        let snapshot = self.gate.active();
        let mut cors_preflight = false;
        if let Some(snapshot) = &snapshot {
            match prepare(&mut parts, &snapshot.policy, body.is_end_stream()) {
                Ok(prepared) => cors_preflight = prepared.cors_preflight,
                Err(refusal) => return Ok(self.refuse(&snapshot.policy.name, &parts, &refusal)),
            }
        }
        let decision = match &snapshot {
            Some(snapshot) if cors_preflight => Decision::Allow(Permit {
                policy: Arc::clone(snapshot),
                token: None,
                basis: PermitBasis::AuthenticationDisabled,
            }),
            _ => self.gate.decide(&parts).await,
        };
        let judged_by = match &decision {
            Decision::Allow(permit) => Some(&permit.policy),
            Decision::Deny(refusal) => refusal.policy.as_ref(),
        };
        if let Some(judged_by) = judged_by
            && !snapshot.as_ref().is_some_and(|s| Arc::ptr_eq(s, judged_by))
            && !is_prepared(&parts, &judged_by.policy, body.is_end_stream())
        {
            // A reload landed between preparing and judging, and the new policy reads this
            // request differently: what was judged is not what would be forwarded.
            tracing::info!(policy = %judged_by.policy.name, "policy changed while judging a request");
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
            ));
        }
        let elapsed = started.elapsed().as_secs_f64();
        match decision {
            Decision::Deny(refusal) => {
                let (policy_name, rejection) = (refusal.policy_name(), &refusal.rejection);
                self.metrics
                    .record_denied(policy_name, rejection.reason, elapsed);
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
                    .record_allowed(policy_name, permit.basis, elapsed);
                if let Some((_, verified)) = &permit.token {
                    tracing::debug!(
                        policy = policy_name,
                        iss = verified.issuer.as_deref(),
                        kid = verified.kid.as_deref(),
                        alg = %verified.algorithm,
                        "request permitted"
                    );
                }
                prepare_upstream_request(&mut parts, &permit.policy, &permit, &peer);
                Ok(self.forward(parts, body).await)
            }
        }
    }

    /// The 400 for a request that cannot be made unambiguous.
    fn refuse(
        &self,
        policy_name: &str,
        parts: &http::request::Parts,
        refusal: &boundary::Refusal,
    ) -> Response<ProxyBody> {
        let reason = refusal.reason();
        self.metrics
            .requests
            .with_label_values(&[policy_name, "deny", reason])
            .inc();
        tracing::info!(
            policy = policy_name,
            reason,
            detail = %refusal,
            method = %parts.method,
            "request refused before judging"
        );
        let body = serde_json::json!({
            "statusCode": 400,
            "message": refusal.client_message(),
            "reason": reason,
        })
        .to_string();
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
    ) -> Response<ProxyBody> {
        let upgrade = is_upgrade(&parts.headers).then(|| parts.extensions.remove::<OnUpgrade>());
        let offered_upgrade = upgrade.is_some().then(|| parts.headers.clone());
        let use_http2 = match self.upstream.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Auto => parts.version == Version::HTTP_2,
        };
        let mut uri = self.upstream.base.clone().into_parts();
        uri.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
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
            // Only an upgrade the request offered (and the policy allowed) becomes a tunnel.
            let answered = offered_upgrade
                .as_ref()
                .is_some_and(|offered| upgrade_answered(offered, response.headers()));
            if !answered {
                tracing::warn!("the application switched protocols without an allowed upgrade");
                return plain(StatusCode::BAD_GATEWAY, "Bad Gateway");
            }
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

/// The client end of a connection, as `X-Forwarded-For` names it: formatted once per
/// connection rather than once per request.
#[derive(Clone, Debug)]
pub struct Peer {
    ip: IpAddr,
    forwarded_for: Option<HeaderValue>,
}

impl Peer {
    pub fn new(address: SocketAddr) -> Self {
        let ip = address.ip();
        Self {
            ip,
            forwarded_for: HeaderValue::from_str(&ip.to_string()).ok(),
        }
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
    peer: &Peer,
) {
    let policy = &active.policy;
    // Hop-by-hop headers and every spelling of the claim headers left before judging.
    if let Some((_, verified)) = &permit.token {
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
    }
    // A token reaches the application only when it was verified and the policy forwards it:
    // not on routes without authentication, not from a source other than the one verified.
    if !(policy.forward_token && permit.token.is_some()) {
        strip_token_sources(&policy.extraction, &mut parts.headers, &mut parts.uri);
    }
    let forwarded_for = match parts.headers.get(&X_FORWARDED_FOR) {
        Some(existing) => existing
            .to_str()
            .ok()
            .and_then(|existing| HeaderValue::from_str(&format!("{existing}, {}", peer.ip)).ok()),
        None => peer.forwarded_for.clone(),
    };
    if let Some(value) = forwarded_for {
        parts.headers.insert(X_FORWARDED_FOR, value);
    }
}

/// [`boundary::prepare`] on request parts.
fn prepare(
    parts: &mut http::request::Parts,
    policy: &tokengate_policy::CompiledPolicy,
    body_is_empty: bool,
) -> Result<boundary::Prepared, boundary::Refusal> {
    boundary::prepare(
        &mut parts.method,
        &mut parts.uri,
        &mut parts.headers,
        parts.version,
        body_is_empty,
        policy,
    )
}

/// Whether `policy` would leave prepared request parts as they are.
fn is_prepared(
    parts: &http::request::Parts,
    policy: &tokengate_policy::CompiledPolicy,
    body_is_empty: bool,
) -> bool {
    let (mut method, mut uri, mut headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    boundary::prepare(
        &mut method,
        &mut uri,
        &mut headers,
        parts.version,
        body_is_empty,
        policy,
    )
    .is_ok()
        && method == parts.method
        && uri == parts.uri
        && headers == parts.headers
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
