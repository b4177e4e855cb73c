//! Sends one request to the Kubernetes API as whoever `KUBECONFIG` names, and reports what the
//! API server answered: the status code on the first line of stdout, the body after it. The
//! cluster tests run it as a ServiceAccount to see RBAC decisions from outside the test process.
//!
//! Exit code: 0 for 2xx, 3 for 403, 4 for any other status, 1 when no answer was had.

use anyhow::{Context, Result};
use clap::Parser;
use http_body_util::BodyExt;

#[derive(Debug, Parser)]
#[command(name = "tokengate-kube-probe")]
struct Args {
    /// HTTP method, e.g. GET or POST.
    method: http::Method,
    /// API path, e.g. /api/v1/namespaces/demo/configmaps.
    path: String,
    /// JSON request body.
    body: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("building a client from KUBECONFIG")?;
    let request = http::Request::builder()
        .method(args.method)
        .uri(&args.path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(
            args.body.unwrap_or_default().into_bytes(),
        ))
        .context("building the request")?;
    let response = client
        .send(request)
        .await
        .with_context(|| format!("sending the request to {}", args.path))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes();
    println!("{}", status.as_u16());
    println!("{}", String::from_utf8_lossy(&body));
    let code = if status.is_success() {
        0
    } else if status == http::StatusCode::FORBIDDEN {
        3
    } else {
        4
    };
    std::process::exit(code);
}
