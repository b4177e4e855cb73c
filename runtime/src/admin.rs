//! The admin server every tokengate process serves: `/live` (the process answers), `/ready`
//! (the process's own notion of ready, with a body saying why or why not, so `curl /ready`
//! answers "why is my pod not ready") and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

/// What `/ready` answers: the status follows `ready`, the body is `detail`.
pub struct Readiness {
    pub ready: bool,
    pub detail: String,
}

/// An answer the process computes itself, asynchronously.
pub type AdminFuture = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// The process-specific half of the admin server.
pub trait AdminState: Send + Sync + 'static {
    fn readiness(&self) -> Readiness;
    /// The metrics in the Prometheus text exposition format.
    fn metrics(&self) -> String;
    /// Paths the process answers itself (the sidecar's application probes); `None` for the
    /// standard ones.
    fn route(&self, _path: &str) -> Option<AdminFuture> {
        None
    }
}

/// Serves plain HTTP/1.1 on `listener` for ever. No bodies are read and nothing is kept per
/// connection.
pub async fn serve_admin<S: AdminState>(listener: tokio::net::TcpListener, state: Arc<S>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = Arc::clone(&state);
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let path = request.uri().path();
                let answer = match state.route(path) {
                    Some(routed) => Err(routed),
                    None => Ok(respond(path, &*state)),
                };
                async move {
                    let response = match answer {
                        Ok(response) => response,
                        Err(routed) => routed.await,
                    };
                    Ok::<_, Infallible>(response)
                }
            });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to one admin request.
pub fn respond(path: &str, state: &impl AdminState) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/live" => (StatusCode::OK, "text/plain", "live\n".to_owned()),
        "/ready" => {
            let readiness = state.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", readiness.detail)
        }
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", state.metrics()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);

    impl AdminState for Fixed {
        fn readiness(&self) -> Readiness {
            Readiness {
                ready: self.0,
                detail: "why\n".to_owned(),
            }
        }
        fn metrics(&self) -> String {
            "m 1\n".to_owned()
        }
    }

    #[test]
    fn routes_answer_with_status_and_type() {
        assert_eq!(respond("/live", &Fixed(false)).status(), StatusCode::OK);
        assert_eq!(respond("/ready", &Fixed(true)).status(), StatusCode::OK);
        assert_eq!(
            respond("/ready", &Fixed(false)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let metrics = respond("/metrics", &Fixed(true));
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
        assert_eq!(respond("/x", &Fixed(true)).status(), StatusCode::NOT_FOUND);
    }
}
