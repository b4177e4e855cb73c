//! The provider's HTTP side: accept loop, routing, discovery and JWKS handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::routes::{Endpoint, Personality, Route};
use super::{Shared, entra, lock, token};

/// Stops the accept loop, and with it every open connection, when dropped.
pub(crate) struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `shared` on `listener`, over TLS when `tls` is given.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> ServerTask {
    ServerTask(tokio::spawn(async move {
        // Connections live in this set so aborting the loop closes them too.
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually fd exhaustion; back off instead of spinning.
                    tracing::warn!(error = %e, "identity provider accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            let shared = shared.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match tls {
                    None => serve_connection(stream, shared).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => serve_connection(stream, shared).await,
                        Err(e) => {
                            tracing::debug!(error = %e, "identity provider TLS handshake failed");
                        }
                    },
                }
            });
        }
    }))
}

/// Serves one connection (plain or TLS) until it closes.
async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "identity provider connection ended with error");
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(route) = shared.personality.resolve(req.uri().path()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found", "error_description": "no such endpoint" }),
        );
    };
    // Entra paths name a tenant: one the directory does not know is refused as Entra does.
    let scope = match &route.tenant {
        None => None,
        Some(segment) => match lock(&shared.directory).scope(segment) {
            Some(scope) => Some(scope),
            None => {
                let (status, body) = entra::unknown_tenant(segment);
                return json_response(status, &body);
            }
        },
    };
    match route.endpoint {
        Endpoint::Discovery | Endpoint::Jwks => {
            let counter = if route.endpoint == Endpoint::Discovery {
                &shared.discovery_fetches
            } else {
                &shared.jwks_fetches
            };
            // Count every attempt, failed ones included: resilience tests assert on retries.
            counter.fetch_add(1, Ordering::SeqCst);
            let client = req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|agent| agent.to_str().ok())
                .and_then(|agent| agent.split(['/', ' ']).next())
                .unwrap_or_default()
                .to_owned();
            if route.endpoint == Endpoint::Jwks {
                *lock(&shared.jwks_fetches_by_client)
                    .entry(client.clone())
                    .or_default() += 1;
            }
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed("GET, HEAD");
            }
            fault_delay(shared).await;
            let refused = lock(&shared.refused_clients).contains(&client);
            if refused || !shared.available.load(Ordering::SeqCst) {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": "temporarily_unavailable" }),
                );
            }
            if route.endpoint == Endpoint::Discovery {
                discovery(shared, &route, scope.as_ref())
            } else {
                jwks(shared)
            }
        }
        Endpoint::Token => {
            shared.token_requests.fetch_add(1, Ordering::SeqCst);
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            token::handle(shared, &route, req).await
        }
    }
}

async fn fault_delay(shared: &Shared) {
    let delay = lock(&shared.settings).delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

fn discovery(
    shared: &Shared,
    route: &Route,
    scope: Option<&entra::Scope>,
) -> Response<Full<Bytes>> {
    let document = lock(&shared.settings).discovery_override.clone();
    let document = document.unwrap_or_else(|| match (&route.tenant, scope) {
        (Some(segment), Some(scope)) => {
            entra::discovery_document(&shared.base_url, segment, scope, route.v1)
        }
        _ => Personality::generic_discovery_document(&shared.base_url),
    });
    json_response(StatusCode::OK, &document)
}

fn jwks(shared: &Shared) -> Response<Full<Bytes>> {
    let raw = lock(&shared.settings).jwks_override.clone();
    let body = match raw {
        Some(raw) => Bytes::from(raw),
        None => {
            let jwks = lock(&shared.keys).jwks();
            let jwks = match shared.personality {
                Personality::Generic => jwks,
                Personality::Entra => entra::rsa_only(jwks),
            };
            Bytes::from(jwks.to_string())
        }
    };
    // No caching headers: tests drive refresh timing through the sidecar's own settings.
    bytes_response(StatusCode::OK, body)
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method_not_allowed", "error_description": format!("use {allow}") }),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// A JSON response. Built without the fallible response builder so no handler can panic.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    bytes_response(status, Bytes::from(body.to_string()))
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
